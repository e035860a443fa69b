"""Job functions: business logic only. The catalog names them; the worker's process() runs them."""
