"""What the public site says: its HTML pages and the confirmation mail's bodies.

Small, self-contained pages (no script, no external resource, one inline style sheet) that
work in any browser and read well on a phone. Every value is escaped by Jinja's autoescape.
Pages reached through a personal link (confirm, unsubscribe) are ``no-store`` and send a
``Referer`` to this site only (``same-origin``), so the token in the URL does not leak into
caches or other sites' logs. Not ``no-referrer``: with it a browser sends ``Origin: null``
on the page's own form POSTs, which the same-origin check must refuse.

Owns: wording and markup. Does not own: what a request does (``web.subscription``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from starlette.responses import HTMLResponse

_env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

# No script, no resource from elsewhere, forms to this site only, and never in a frame (a
# page of another site must not overlay its own button on our Unsubscribe one).
_SECURITY = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}
PRIVATE_HEADERS: Mapping[str, str] = {
    **_SECURITY,
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Robots-Tag": "noindex",
}
PUBLIC_HEADERS: Mapping[str, str] = {**_SECURITY, "Cache-Control": "no-cache"}

_LAYOUT = """\
<!DOCTYPE html>
<html lang="{{ language }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{{ heading }} · {{ title }}</title>
<style>
:root { color-scheme: light dark; font: 17px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin: 0; padding: 24px 16px; background: #f4f4f5; color: #1f2328; }
main { max-width: 34rem; margin: 0 auto; padding: 24px; background: #fff; border-radius: 8px;
  box-shadow: 0 1px 4px rgb(0 0 0 / 10%); }
h1 { margin: 0 0 12px; font-size: 1.4rem; }
p.site { margin: 0 0 20px; color: #59636e; font-size: .9rem; }
label { display: block; margin: 12px 0 4px; font-weight: 600; }
input[type=email], input[type=text] { box-sizing: border-box; width: 100%; padding: 8px 10px;
  font: inherit; border: 1px solid #a1a1aa; border-radius: 6px; }
button { margin-top: 16px; padding: 9px 18px; font: inherit; font-weight: 600; color: #fff;
  background: #1f2328; border: 0; border-radius: 6px; cursor: pointer; }
.error { padding: 8px 12px; background: #ffebe9; border: 1px solid #cf222e; border-radius: 6px; }
a { color: #0969da; }
@media (prefers-color-scheme: dark) {
  body { background: #111214; color: #e6e6e9; }
  main { background: #1c1d21; }
  p.site { color: #a1a1aa; }
  button { background: #e6e6e9; color: #111214; }
  a { color: #58a6ff; }
  .error { background: #3d1214; }
}
</style>
</head>
<body>
<main>
<p class="site"><a href="{{ site_url }}">{{ title }}</a></p>
<h1 id="heading">{{ heading }}</h1>
{% block content %}{% endblock %}
</main>
</body>
</html>
"""

_PAGES: dict[str, str] = {
    "subscribe": """\
{% if description %}<p>{{ description }}</p>{% endif %}
{% if error %}<p id="error" class="error" role="alert">{{ error }}</p>{% endif %}
<form id="subscribe" method="post" action="/subscribe">
<label for="email">E-mail address</label>
<input id="email" name="email" type="email" required autocomplete="email"
value="{{ email }}" placeholder="you@example.com">
<label for="name">Name <small>(optional, used in the greeting)</small></label>
<input id="name" name="name" type="text" autocomplete="name" value="{{ name }}">
<button id="submit" type="submit">Subscribe</button>
</form>
<p><small>We send a message to confirm the address first; nothing else arrives until you
click the link in it. Every issue has a link to leave at once.</small></p>
<p><small>Rather read in a feed reader? <a href="{{ site_url }}feeds/atom.xml">Atom</a>,
<a href="{{ site_url }}feeds/rss.xml">RSS</a>, <a href="{{ site_url }}feeds/feed.json">JSON
Feed</a>; past issues are in the <a href="{{ site_url }}archive/">archive</a>.</small></p>
""",
    "check_inbox": """\
<p id="message">If <strong>{{ email }}</strong> can receive this newsletter, a message with a
confirmation link is on its way. Click the link in it to start receiving issues.</p>
<p><small>Nothing there after a few minutes? Look in the spam folder, or check the address
and <a href="/subscribe">try again</a>.</small></p>
""",
    "confirm": """\
<p id="message">Send this newsletter to <strong>{{ email }}</strong>?</p>
<form id="confirm-form" method="post" action="">
<button id="confirm" type="submit">Yes, subscribe me</button>
</form>
<p><small>If you did not ask for it, close this page: nothing will be sent.</small></p>
""",
    "confirmed": """\
<p id="message">You are subscribed: the next issue will reach <strong>{{ email }}</strong>.
Every issue has a link to unsubscribe.</p>
""",
    "confirm_gone": """\
<p id="message">{{ message }}</p>
<p><a href="/subscribe">Subscribe again</a></p>
""",
    "unsubscribe": """\
<p id="message">Stop sending this newsletter to <strong>{{ email }}</strong>?</p>
<form id="unsubscribe" method="post" action="">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button id="confirm" type="submit">Unsubscribe</button>
</form>
""",
    "unsubscribed": """\
<p id="message">You are unsubscribed: <strong>{{ email }}</strong> will receive no more
issues.</p>
<p><small>Changed your mind? <a href="/subscribe">Subscribe again</a>.</small></p>
""",
    "problem": """\
<p id="message">{{ message }}</p>
{% if link %}<p><a href="{{ link }}">{{ link_text }}</a></p>{% endif %}
""",
}

_TEMPLATES = {
    name: _env.from_string(
        _LAYOUT.replace("{% block content %}{% endblock %}", body),
    )
    for name, body in _PAGES.items()
}


def page(
    template: str,
    settings: Mapping[str, str],
    /,
    *,
    heading: str,
    status_code: int = 200,
    private: bool = False,
    headers: Mapping[str, str] | None = None,
    **values: Any,
) -> HTMLResponse:
    """The page ``template`` for the newsletter described by ``settings`` (title, site_url,
    language, description), with ``values`` for its placeholders."""
    html = _TEMPLATES[template].render(heading=heading, **settings, **values)
    merged = dict(PRIVATE_HEADERS if private else PUBLIC_HEADERS)
    merged.update(headers or {})
    return HTMLResponse(html, status_code=status_code, headers=merged)


# --- the confirmation mail ----------------------------------------------------------------------

# Plain text: nothing to escape (autoescape would turn "&" into "&amp;" in a text part).
_text_env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)  # noqa: S701
_MAIL_TEXT = _text_env.from_string(
    """\
Hello{% if name %} {{ name }}{% endif %},

someone, probably you, asked to receive {{ title }} at this address.
To confirm, open this link within {{ hours }} hours:

{{ url }}

If it was not you, ignore this message: nothing more will be sent.

{{ title }} · {{ postal_address }}
"""
)

_MAIL_HTML = _env.from_string(
    """\
<!DOCTYPE html>
<html lang="{{ language }}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ subject }}</title></head>
<body style="margin:0;padding:24px;background:#f4f4f5;color:#1f2328;
font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif">
<div style="max-width:32rem;margin:0 auto;padding:24px;background:#ffffff;border-radius:8px">
<p>Hello{% if name %} {{ name }}{% endif %},</p>
<p>someone, probably you, asked to receive <strong>{{ title }}</strong> at this address.</p>
<p style="margin:24px 0"><a href="{{ url }}" style="display:inline-block;padding:10px 20px;
background:#1f2328;color:#ffffff;text-decoration:none;border-radius:6px;font-weight:600">Yes,
subscribe me</a></p>
<p style="font-size:14px;color:#59636e">The link works for {{ hours }} hours. If it was not
you, ignore this message: nothing more will be sent.</p>
<p style="font-size:12px;color:#59636e">{{ title }} · {{ postal_address }}</p>
</div>
</body>
</html>
"""
)


def confirmation_mail(
    *,
    title: str,
    url: str,
    name: str | None,
    hours: float,
    postal_address: str,
    language: str,
) -> tuple[str, str, str]:
    """(subject, HTML, text) of the mail asking to confirm a subscription at ``url``."""
    subject = f"Confirm your subscription to {title}"
    values = {
        "title": title,
        "url": url,
        "name": name or "",
        "hours": f"{hours:g}",
        "postal_address": postal_address,
        "language": language,
        "subject": subject,
    }
    return subject, _MAIL_HTML.render(**values), _MAIL_TEXT.render(**values)
