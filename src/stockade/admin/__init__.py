"""The control plane: admin API (health, readiness, metrics; later keys, clients, reviews) and dashboard."""
