"""The version, in one place: ``pyproject.toml`` reads it (setuptools' dynamic ``version``) and
every module that needs it imports it from here, never from the package ``__init__``, so that
no module depends on the facade that imports it."""

from __future__ import annotations

__version__ = "0.1.0"

# What every HTTP request we make says about us (gathering, provider APIs, WebSub pings).
USER_AGENT = f"newsletter/{__version__} (+https://github.com/newsletter-publisher/newsletter)"
