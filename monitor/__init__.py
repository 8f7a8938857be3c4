"""mailmon: a synthetic mail-protocol monitor that tells a server-side outage from a client-side fault."""

__version__ = "0.1.0"
