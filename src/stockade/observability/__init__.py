"""Decision log and metrics."""
