"""Versioned schema migrations: applied in order on open, recorded in `schema_version`, same for every SQL backend."""
