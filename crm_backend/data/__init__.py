"""Data files the CRM ships with (not code): see each folder's PROVENANCE.md."""
