"""Network endpoints: the native WebSocket protocol (``protocol`` is its I/O-free core)."""
