"""``computectl``: the root (``main.py``), the server-side and API-client commands, the demo."""
