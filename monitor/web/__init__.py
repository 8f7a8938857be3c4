"""HTTP side of the monitor: a small asyncio server and the endpoints it serves."""
