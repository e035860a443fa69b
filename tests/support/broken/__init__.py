"""Job modules that must stop a service from starting, each for one reason."""
