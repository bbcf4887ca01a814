"""newsletter: gather articles, publish RSS/Atom/JSON feeds and an e-mail digest.

The public API is what ``__all__`` lists; everything else is internal and may change.
"""

from __future__ import annotations

from newsletter._version import __version__
from newsletter.config import Config, load_config
from newsletter.exceptions import (
    ConfigError,
    MailError,
    NewsletterError,
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
    GatherResult,
    SendReport,
    Subscriber,
    SubscriberStatus,
)

__all__ = [
    "Article",
    "Config",
    "ConfigError",
    "DeliveryResult",
    "DeliveryStatus",
    "Digest",
    "GatherResult",
    "MailError",
    "NewsletterError",
    "RenderError",
    "SendReport",
    "SourceError",
    "StorageError",
    "Subscriber",
    "SubscriberError",
    "SubscriberStatus",
    "__version__",
    "load_config",
]
