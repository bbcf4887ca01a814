"""Tell a WebSub hub that feeds changed: the publisher's side of WebSub (formerly PubSubHubbub).

The feeds name the hub (``<atom:link rel="hub">`` in RSS and Atom, ``hubs`` in JSON Feed, see
``render.feeds``); subscribers register with that hub, and after each change we ask the hub
to fetch the feed again and push it to them. W3C WebSub leaves the publisher's notification to
the hub; the form every public hub accepts is PubSubHubbub's "publish" ping: a form-encoded
``POST`` of ``hub.mode=publish`` and ``hub.url=<the topic URL>``, answered with a 2xx
(typically ``204 No Content``).

One request per topic: PubSubHubbub 0.3 allowed ``hub.url`` to repeat, but not every hub reads
more than the first. A ping is a courtesy, never a condition for publishing: a refused ping
is logged as a warning and returned as a value; a hub that cannot be reached is tried once
per call, and the remaining topics are reported as not sent rather than each waiting for the
same timeout.

Owns: the ping's wire format and its error handling (``requests`` errors stop here). Does not
own: deciding which feeds changed (``render.feeds``) or when to ping (``core``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import requests

from newsletter.sources import deadline

log = logging.getLogger(__name__)

_EXCERPT = 200  # characters of a refusal's body worth logging


@dataclass(frozen=True)
class PingResult:
    """The hub's answer for one topic. ``status`` is None when nothing was answered."""

    topic: str
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def ping_hub(
    hub: str,
    topics: Sequence[str],
    *,
    user_agent: str,
    timeout: float,
    session: requests.Session | None = None,
) -> list[PingResult]:
    """Ping ``hub`` once for each topic URL; return one result per topic, in order.

    Never raises for the hub's sake: failures are logged (warning) and returned.
    """
    results: list[PingResult] = []
    own = session is None
    # A hub that answers a byte at a time must not hold the feeds build past ``timeout``.
    http = deadline.mount(session or requests.Session())
    try:
        for i, topic in enumerate(topics):
            result = _ping(http, hub, topic, user_agent, timeout)
            results.append(result)
            if result.status is None and result.error is not None:
                skipped = topics[i + 1 :]
                if skipped:
                    log.warning("WebSub: %d more pings to %s not sent", len(skipped), hub)
                reason = f"not sent: the hub was unreachable ({result.error})"
                results.extend(PingResult(t, error=reason) for t in skipped)
                break
    finally:
        if own:
            http.close()
    sent = sum(r.ok for r in results)
    if sent:
        log.info("WebSub: %s told of %d changed feeds", hub, sent)
    return results


def _ping(
    http: requests.Session, hub: str, topic: str, user_agent: str, timeout: float
) -> PingResult:
    with deadline.limit(timeout) as limit:
        try:
            response = http.post(
                hub,
                data={"hub.mode": "publish", "hub.url": topic},
                headers={"User-Agent": user_agent},
                timeout=timeout,
                # A redirected POST turns into a GET on the way: that is no ping.
                allow_redirects=False,
            )
            with response:
                status = response.status_code
                ok = 200 <= status < 300
                body = "" if ok else " ".join(response.text[:_EXCERPT].split())
        except requests.RequestException as e:
            reason = (
                f"no complete answer within {timeout:g} s (total deadline)"
                if limit.passed
                else f"{type(e).__name__}: {e}"
            )
            log.warning("WebSub: cannot reach the hub %s to announce %s: %s", hub, topic, reason)
            return PingResult(topic, error=reason)
    if ok:
        return PingResult(topic, status=status)
    log.warning("WebSub: the hub %s refused the ping for %s: HTTP %d %s", hub, topic, status, body)
    return PingResult(topic, status=status, error=f"HTTP {status}")
