"""Rendering: feeds (``feeds.py``), the digest (``digest.py``) and the archive (``archive.py``).
Renderers never fetch and never touch the database. The per-recipient placeholders a digest
carries live outside this package (``newsletter.personalize``) because mail backends fill them
and mail must not import render."""
