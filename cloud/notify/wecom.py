"""WeCom (企业微信): application messages to bound users, and group robots.

Application message (the path of Alertmanager's ``notify/wechat/wechat.go``)::

    GET  {api_url}gettoken?corpid=ID&corpsecret=SECRET  -> {"errcode":0,"access_token":T,"expires_in":7200}
    POST {api_url}message/send?access_token=T            -> {"errcode":0,"msgid":"..."}

The token is cached until 5 minutes before ``expires_in`` runs out; errcode 42001 (expired) or 40014
(invalid) drops it, fetches a new one and retries once. ``enable_duplicate_check`` asks WeCom to drop a
resend of the same content within 30 minutes: a retry after a crash mid-send does not page twice.
``to`` is a WeCom user id, or ``party:<id>`` / ``tag:<id>`` for a department or tag.

Group robot::

    POST {url}   (the robot's webhook URL, ``.../cgi-bin/webhook/send?key=K``)   markdown message

Both answer errcode 45009 when called too often (a robot takes 20 messages a minute): that is a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from cloud.notify.channel import Delivered, GiveUp, Notice, Outcome, Retry, request_json

#: errcodes after which a retry can succeed: system busy, API frequency limits
_TEMPORARY = {-1: "system busy", 45009: "API rate limit", 45033: "API concurrency limit", 45047: "quota"}
_TOKEN_ERRORS = (42001, 40014)
RATE_LIMIT_AFTER_S = 60.0


class WeComApp:
    """Application messages sent as the configured agent."""

    name = "wecom"

    def __init__(
        self,
        *,
        corp_id: str,
        corp_secret: str,
        agent_id: int,
        client: httpx.AsyncClient,
        api_url: str = "https://qyapi.weixin.qq.com/cgi-bin/",
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._corp_id = corp_id
        self._secret = corp_secret
        self._agent_id = agent_id
        self._client = client
        self._api = api_url if api_url.endswith("/") else api_url + "/"
        self._now = monotonic or _loop_time
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.token_fetches = 0

    def __repr__(self) -> str:
        return f"WeComApp(corp_id={self._corp_id!r}, agent_id={self._agent_id})"

    async def _access_token(self, *, refresh: bool = False) -> str | Retry | GiveUp:
        async with self._lock:
            if not refresh and self._token and self._now() < self._expires:
                return self._token
            data = await request_json(
                self._client,
                "GET",
                self._api + "gettoken",
                params={"corpid": self._corp_id, "corpsecret": self._secret},
            )
            if not isinstance(data, dict):
                return data
            code = int(data.get("errcode", 0))
            if code != 0 or not data.get("access_token"):
                return _errcode_outcome(code, str(data.get("errmsg", "")), what="gettoken")
            self.token_fetches += 1
            self._token = str(data["access_token"])
            ttl = float(data.get("expires_in", 7200))
            self._expires = self._now() + max(ttl - 300.0, ttl / 2)
            return self._token

    def _body(self, notice: Notice, to: str) -> dict[str, object]:
        text = "\n".join(
            [
                notice.title,
                *notice.lines,
                *(f'<a href="{a.url}">{a.label}</a>' for a in notice.actions),
                *([notice.reply_hint] if notice.reply_hint else []),
            ]
        )
        body: dict[str, object] = {
            "msgtype": "text",
            "agentid": self._agent_id,
            "text": {"content": text},
            "enable_duplicate_check": 1,
            "duplicate_check_interval": 1800,
        }
        if to.startswith("party:"):
            body["toparty"] = to.removeprefix("party:")
        elif to.startswith("tag:"):
            body["totag"] = to.removeprefix("tag:")
        else:
            body["touser"] = to
        return body

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        body = self._body(notice, to)
        for attempt in range(2):
            token = await self._access_token(refresh=attempt > 0)
            if not isinstance(token, str):
                return token
            data = await request_json(
                self._client, "POST", self._api + "message/send", params={"access_token": token}, json=body
            )
            if not isinstance(data, dict):
                return data
            code = int(data.get("errcode", 0))
            if code in _TOKEN_ERRORS:
                continue  # expired or invalid token: fetch a new one and send again, once
            if code == 0:
                if data.get("invaliduser"):
                    return GiveUp(f"WeCom does not know user(s) {data['invaliduser']}")
                return Delivered(str(data.get("msgid", "")))
            return _errcode_outcome(code, str(data.get("errmsg", "")), what="message/send")
        return Retry("WeCom access token rejected twice")


class WeComRobot:
    """A group robot (群机器人); ``to`` is ignored: the robot's URL is the address."""

    name = "wecom_robot"

    def __init__(self, *, url: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client

    def __repr__(self) -> str:  # the URL holds the robot's key
        return "WeComRobot(<url redacted>)"

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        body = {"msgtype": "markdown", "markdown": {"content": notice.markdown()}}
        data = await request_json(self._client, "POST", self._url, json=body)
        if not isinstance(data, dict):
            return data
        code = int(data.get("errcode", 0))
        if code == 0:
            return Delivered()
        return _errcode_outcome(code, str(data.get("errmsg", "")), what="webhook/send")


def _errcode_outcome(code: int, message: str, *, what: str) -> Retry | GiveUp:
    if code in _TEMPORARY:
        after = RATE_LIMIT_AFTER_S if code in (45009, 45033) else None
        return Retry(f"WeCom {what} errcode {code} ({_TEMPORARY[code]}): {message[:120]}", after)
    return GiveUp(f"WeCom {what} errcode {code}: {message[:120]}")


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
