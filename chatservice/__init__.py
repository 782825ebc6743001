"""chatservice: a WebSocket echo and chat service for Twisted's twistd."""

__version__ = "0.1.0"
