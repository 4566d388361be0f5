"""What every channel adapter shares: the content it renders, the outcome it returns, one HTTP seam.

A channel has one job, as Alertmanager's ``notify/*`` packages do: render a :class:`Notice` for its wire
format, send it to one address, and say what happened:

- :class:`Delivered` the provider accepted it (``provider_id`` = its message id when it gives one);
- :class:`Retry` a temporary failure (timeout, 5xx, rate limited, token expired twice): try again, not
  before ``after`` seconds when the provider said so;
- :class:`GiveUp` a permanent failure (bad signature, unknown user, refused number): retrying cannot help,
  the delivery engine falls back to the next channel.

Channels never raise for a provider's misbehaviour; :func:`request_json` is the one place where httpx's
exceptions and HTTP statuses become outcomes. Secrets (robot keys, access keys) never appear in a reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from firmware_bridge.kernel.locale import Lang


@dataclass(frozen=True, slots=True)
class LinkButton:
    """One action the recipient can take from the message: a label and a signed link."""

    label: str
    url: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Channel-neutral content of one notification, already in the recipient's language.

    ``params`` feeds SMS / voice templates (pre-approved by the provider, so only values travel):
    ``event``, ``place``, ``time``, ``ref`` (the reply reference) and ``level``.
    """

    title: str
    lines: tuple[str, ...] = ()
    actions: tuple[LinkButton, ...] = ()
    reply_hint: str = ""
    severity: int = 2
    lang: Lang = "zh"
    params: dict[str, str] = field(default_factory=dict)
    incident_id: str = ""

    def plain_text(self, *, with_links: bool = True) -> str:
        parts = [self.title, *self.lines]
        if with_links:
            parts += [f"{a.label}: {a.url}" for a in self.actions]
        if self.reply_hint:
            parts.append(self.reply_hint)
        return "\n".join(parts)

    def markdown(self) -> str:
        parts = [f"### {self.title}", *self.lines]
        if self.actions:
            parts.append(" | ".join(f"[{a.label}]({a.url})" for a in self.actions))
        if self.reply_hint:
            parts.append(self.reply_hint)
        return "\n\n".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "lines": list(self.lines),
            "actions": [{"label": a.label, "url": a.url} for a in self.actions],
            "reply_hint": self.reply_hint,
            "severity": self.severity,
            "lang": self.lang,
            "params": dict(self.params),
            "incident_id": self.incident_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Notice:
        return cls(
            title=str(data["title"]),
            lines=tuple(str(x) for x in data.get("lines", ())),
            actions=tuple(LinkButton(str(a["label"]), str(a["url"])) for a in data.get("actions", ())),
            reply_hint=str(data.get("reply_hint", "")),
            severity=int(data.get("severity", 2)),
            lang="en" if data.get("lang") == "en" else "zh",
            params={str(k): str(v) for k, v in dict(data.get("params", {})).items()},
            incident_id=str(data.get("incident_id", "")),
        )


@dataclass(frozen=True, slots=True)
class Delivered:
    provider_id: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


Outcome = Delivered | Retry | GiveUp


class Channel(Protocol):
    """A channel adapter. ``key`` is the delivery's dedup key (idempotency header where supported)."""

    name: str

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome: ...


#: HTTP statuses after which a retry can succeed
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def request_json(
    client: httpx.AsyncClient, method: str, url: str, *, expect_json: bool = True, **kwargs: Any
) -> dict[str, Any] | Retry | GiveUp:
    """Send one request; the JSON object answered with 2xx, or the outcome that the failure means.

    Timeouts and connection failures are temporary; 408/429/5xx are temporary (honouring
    ``Retry-After``); other 4xx, and non-JSON 2xx bodies when ``expect_json``, are permanent.
    """
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        return Retry(f"timeout ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return Retry(f"connection failed ({type(exc).__name__})")
    if response.status_code in RETRY_STATUSES:
        return Retry(f"HTTP {response.status_code}", retry_after(response))
    if response.status_code >= 400:
        return GiveUp(f"HTTP {response.status_code}: {response.text[:200]}")
    if not expect_json:
        return {}
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return GiveUp(f"HTTP {response.status_code} with a body that is not JSON")
    if not isinstance(data, dict):
        return GiveUp("answer is not a JSON object")
    return data
