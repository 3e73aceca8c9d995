"""Decision support: the figures a 12345 centre is judged on, hot issues and reply quality."""
