"""Identity: consumers, API keys and admin tokens as services over the store, and the caches in front of it."""
