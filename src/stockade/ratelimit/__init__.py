"""Rate-limit algorithms, keys and counter backends (memory, Redis) shared by the limiter stages."""
