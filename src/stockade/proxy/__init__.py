"""The data plane: an asyncio.Protocol reverse proxy on uvloop + httptools (llhttp)."""
