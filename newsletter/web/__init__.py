"""The HTTP side of newsletter: one ASGI app (Starlette, served by uvicorn).

- ``app``: ``create_app(config_file, concerns=[...])``, the app factory;
- ``site``: what the concerns share (the config, reloaded when it changes; a Publisher);
- ``server``: binding and running under uvicorn;
- ``watch``: change polling and server-sent events;
- ``preview``: the editors' live preview of the next digest (``newsletter preview``);
- ``public``: the public site (``newsletter serve``), made of ``static`` (feeds and archive),
  ``subscription`` (subscribe, confirm, unsubscribe), ``webhooks`` (bounces and complaints)
  and a health check, behind ``proxy`` (trusted ``X-Forwarded-*`` headers), with ``pages``
  (its HTML and the confirmation mail) and ``ratelimit``.

Every concern is a thin front door onto ``Publisher``, like the CLI and the scheduler.
"""

from __future__ import annotations

from newsletter.web.app import Concern, create_app
from newsletter.web.site import Site

__all__ = ["Concern", "Site", "create_app"]
