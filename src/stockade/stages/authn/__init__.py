"""Authenticators (AUTHENTICATE phase): the first that recognises a credential wins."""
