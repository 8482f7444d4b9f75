"""Constants shared by the proxy's connection and exchange modules."""

INF = float("inf")
# Why client reads are paused (a bitmask: one reason ending must not resume reads another still needs paused).
PAUSE_BUFFER = 1
PAUSE_PIPELINE = 2
PAUSE_UPSTREAM = 4
PAUSE_TUNNEL = 8
MAX_BUFFERED_RESPONSE = 16 * 1024 * 1024  # a response a hook must read whole is cut off (502) beyond this
MAX_DISCARD = 64 * 1024  # a denied request's unread body up to this size is drained to keep the connection
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
