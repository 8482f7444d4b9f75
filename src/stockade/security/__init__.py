"""Security primitives, each in one place: paths, addresses, forwarding headers (later jose, keys, crypto)."""
