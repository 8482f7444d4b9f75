"""Rate limits, quotas, concurrency limits and brute-force protection."""
