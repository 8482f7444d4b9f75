"""Reading an HTTP response from a peer the gateway calls (JWKS, introspection) without trusting its size."""

from __future__ import annotations

from typing import Any


async def bounded_body(resp: Any, limit: int) -> bytes | None:
    """The body of a streamed httpx response, or None once it exceeds `limit` bytes (declared or received):
    a peer that answers with gigabytes costs the gateway at most `limit` bytes of memory."""
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
