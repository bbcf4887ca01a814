"""Making text from outside safe to publish: the one HTML sanitizer and URL normalization.

Owns: ``sanitize_html`` (nh3 with our allowed tags, attributes and URL schemes, relative URLs
made absolute, tracking parameters dropped from links) and ``canonical_url`` (the normalized
form of an article's link). Shared by ``newsletter.gather``, which sanitizes every entry of
every kind, and by readers that produce HTML of their own (``newsletter.sources.extract``):
sources may not import ``gather`` (it reaches storage), so the sanitizer lives here.

Does not own: plain-text helpers (``newsletter.text``), choosing article keys or storing.
"""

from __future__ import annotations

from urllib.parse import unquote_plus, urljoin, urlsplit, urlunsplit

import nh3

__all__ = ["TRACKING_PARAMS", "canonical_url", "sanitize_html"]

# Query parameters that only say where a click came from. Matched case-insensitively; any
# parameter starting with "utm_" is dropped too.
TRACKING_PARAMS = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "gbraid",
        "wbraid",
        "msclkid",
        "yclid",
        "twclid",
        "igshid",
        "mc_cid",
        "mc_eid",
        "_hsenc",
        "_hsmi",
        "__hstc",
        "__hssc",
        "__hsfp",
        "mkt_tok",
        "ref_src",
        "ref_url",
        "_ga",
        "_gl",
        "oly_anon_id",
        "oly_enc_id",
        "vero_id",
        "vero_conv",
        "wickedid",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}

_URL_SCHEMES = frozenset({"http", "https", "mailto"})
_URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
_ATTRIBUTES: dict[str, set[str]] = {
    tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()
} | {
    "a": {*nh3.ALLOWED_ATTRIBUTES.get("a", ()), "title"},
    "img": {*nh3.ALLOWED_ATTRIBUTES.get("img", ()), "title"},
    "abbr": {"title"},
}
# Removed with everything inside them; other disallowed tags are unwrapped and keep their text.
_CLEAN_CONTENT_TAGS = frozenset({"script", "style", "template", "iframe"})


# --- URLs ----------------------------------------------------------------------------------------


def canonical_url(url: str | None, base: str | None = None) -> str | None:
    """``url`` resolved against ``base`` and normalized, or None if it is not an http(s) URL.

    Lower-cases scheme and host, drops a default port, the fragment and tracking parameters
    (``utm_*``, ``fbclid``, ... see ``TRACKING_PARAMS``), and keeps every other query parameter
    as written, in order.
    """
    if url is None or not url.strip():
        return None
    absolute = _absolute(url.strip(), base)
    if absolute is None:
        return None
    try:
        parts = urlsplit(absolute)
        host = parts.hostname  # lower-cased by urlsplit
        port = parts.port
    except ValueError:  # a malformed IPv6 literal or port
        return None
    if parts.scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{host}" if at else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", _drop_tracking(parts.query), ""))


def _absolute(url: str, base: str | None) -> str | None:
    try:
        return urljoin(base, url) if base else url
    except ValueError:
        return None


def _drop_tracking(query: str) -> str:
    # Split the raw query rather than parse and re-encode it, so what is kept stays byte-for-byte
    # as the publisher wrote it.
    kept = []
    for pair in query.split("&"):
        if not pair:
            continue
        name = unquote_plus(pair.partition("=")[0]).lower()
        if name.startswith("utm_") or name in TRACKING_PARAMS:
            continue
        kept.append(pair)
    return "&".join(kept)


def _without_tracking(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=_drop_tracking(parts.query)))


# --- HTML ----------------------------------------------------------------------------------------


def sanitize_html(html_text: str, base_url: str | None) -> str:
    """Sanitized HTML, safe to put in a feed, a web page or an e-mail.

    Relative ``href``/``src``/``cite`` URLs are made absolute against ``base_url`` (left as they
    are when there is none), tracking parameters are dropped from links, and only http, https
    and mailto URLs survive. ``data:`` URLs are refused, images included: most mail clients
    block them and they would make every digest carry the bytes inline.
    """
    if not html_text or not html_text.strip():
        return ""

    def url_filter(tag: str, attribute: str, value: str) -> str | None:
        # nh3 checks URL schemes *before* calling this filter and not after, so whatever this
        # returns must be checked here. It must not raise either: nh3 would only report the
        # error to sys.unraisablehook.
        if attribute not in _URL_ATTRIBUTES:
            return value
        try:
            resolved = _absolute(value.strip(), base_url)
            if resolved is None:
                return None
            scheme = urlsplit(resolved).scheme.lower()
            if scheme and scheme not in _URL_SCHEMES:
                return None
            if attribute == "href" and scheme in _DEFAULT_PORTS:
                resolved = _without_tracking(resolved)
        except ValueError:
            return None
        return resolved

    return nh3.clean(
        html_text,
        attributes=_ATTRIBUTES,
        clean_content_tags=_CLEAN_CONTENT_TAGS,
        attribute_filter=url_filter,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()
