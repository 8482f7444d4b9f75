"""The process's file-descriptor limit: raised to the hard limit at start, and a warning when it is short."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("stockade")

# Beyond two per client connection (the client's and its upstream's): listeners, the admin listener's 64
# connections, the store, log and spool files, Redis.
HEADROOM = 128


def raise_soft_limit() -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one, as Go's runtime does at start and nginx's
    `worker_rlimit_nofile` can: the usual soft default (1024) is kept for programs that use select(), and the
    gateway (epoll, through uvloop) is not one. Workers inherit it. A limit that cannot be raised stays."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.debug("could not raise the file descriptor limit", exc_info=exc)


def needed(max_client_connections: int) -> int:
    return 2 * max_client_connections + HEADROOM


def warn_if_short(max_client_connections: int) -> None:
    """One warning when the soft limit is below `needed`: past it, libuv accepts each new connection and closes it
    at once, and says so to no one (no callback, no error: see docs/architecture.md §2), so this is the one place
    the gateway can say it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = needed(max_client_connections)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    log.warning(
        "file descriptors: the limit is %d (ulimit -n; hard limit %s), but limits.max_client_connections %d needs "
        "%d (2 per connection, the client's and the upstream's, + %d): connections past the limit are closed as "
        "soon as they are accepted, and nothing logs them; raise the limit (LimitNOFILE=, ulimit -n) or lower "
        "limits.max_client_connections",
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
        max_client_connections,
        need,
        HEADROOM,
    )
