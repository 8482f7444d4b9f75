"""PRE_AUTH stages: cheap checks that run before any credential is examined."""
