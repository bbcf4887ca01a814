"""Mail backends. ``make_backend(config)`` picks one by ``[mail] backend``.

Backends never query the database: the send loop (``base.MailBackend.send``) is handed batches
of recipients and a ``Ledger`` to report to, and the core wires both to ``Storage``.
"""
