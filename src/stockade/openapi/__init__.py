"""OpenAPI 3.0/3.1 as an enforced contract: load a spec once, compile validators, match operations."""
