"""The gateway as an OAuth2 authorization server for machine clients: clients, signing keys, revocation."""
