"""Decision support: the figures a 12345 centre is judged on, computed from the CRM's tables."""
