"""Job functions: business logic only. The catalog names them; the wrapper runs them."""
