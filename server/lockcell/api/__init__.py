"""The HTTP API v1 served to clients, on aiohttp."""
