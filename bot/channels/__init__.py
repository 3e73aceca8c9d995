"""Channel adapters: they turn a platform's messages into `Inbound` and back, nothing more."""
