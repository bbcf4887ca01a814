"""newsletter: gather articles, publish RSS/Atom/JSON feeds and an e-mail digest.

The public API is what ``__all__`` lists; everything else is internal and may change::

    from newsletter import load_config, make_publisher

    publisher = make_publisher(load_config("newsletter.toml"))
    try:
        results = publisher.gather()  # one GatherResult per source
        files = publisher.build_feeds()
        report = publisher.send_digest()  # a SendReport
    finally:
        publisher.close()

Every error we raise is a ``NewsletterError`` subclass naming where it happened.

``make_publisher``, ``Publisher`` and the plans and reports only its methods return are loaded on
first use (module ``__getattr__``): they live in ``newsletter.core``, which imports every part
(storage, sources, render, mail) and costs about three times what the rest of this module does.
So ``import newsletter`` stays cheap, and a module inside the package importing a sibling never
drags in the facade that imports it back.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from newsletter._version import __version__
from newsletter.config import Config, load_config
from newsletter.exceptions import (
    ConfigError,
    MailError,
    NewsletterError,
    OutputError,
    RenderError,
    SourceError,
    StorageError,
    SubscriberError,
)
from newsletter.types import (
    Article,
    DeliveryResult,
    DeliveryStatus,
    Digest,
    DigestCounts,
    GatherResult,
    ImportReport,
    LeaseHolder,
    NodeInfo,
    SendReport,
    SourceState,
    Subscriber,
    SubscriberStatus,
)

if TYPE_CHECKING:
    from newsletter.core import DigestPlan, Publisher, SendPlan, StatusReport, make_publisher
    from newsletter.render.digest import RenderedDigest

# Public name -> the module that defines it, imported when the name is first asked for.
_LAZY = {
    "DigestPlan": "newsletter.core",
    "Publisher": "newsletter.core",
    "SendPlan": "newsletter.core",
    "StatusReport": "newsletter.core",
    "make_publisher": "newsletter.core",
    "RenderedDigest": "newsletter.render.digest",
}

__all__ = [
    "Article",
    "Config",
    "ConfigError",
    "DeliveryResult",
    "DeliveryStatus",
    "Digest",
    "DigestCounts",
    "DigestPlan",
    "GatherResult",
    "ImportReport",
    "LeaseHolder",
    "MailError",
    "NewsletterError",
    "NodeInfo",
    "OutputError",
    "Publisher",
    "RenderError",
    "RenderedDigest",
    "SendPlan",
    "SendReport",
    "SourceError",
    "SourceState",
    "StatusReport",
    "StorageError",
    "Subscriber",
    "SubscriberError",
    "SubscriberStatus",
    "__version__",
    "load_config",
    "make_publisher",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'newsletter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
