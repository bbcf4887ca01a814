"""Rendering: feeds (``feeds.py``), the digest (``digest.py``) and per-recipient values
(``personalize.py``). Renderers never fetch and never touch the database."""
