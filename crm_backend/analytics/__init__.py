"""Decision support: figures computed from the cases, replies and history the CRM holds."""
