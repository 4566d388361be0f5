"""DingTalk (钉钉) custom group robot, with the signed timestamp ("加签") security setting.

::

    POST https://oapi.dingtalk.com/robot/send?access_token=T&timestamp=MS&sign=S
    S = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{MS}\\n{secret}")))      MS = epoch milliseconds

DingTalk rejects a timestamp more than an hour off. Messages with actions are ``actionCard`` messages
with one button per action (opened in the phone's browser); without actions a ``text`` message that
@-mentions the bound mobile numbers (``to`` = comma-separated mobiles, may be empty). Answers
``{"errcode":0,"errmsg":"ok"}``; 130101 = sending too fast (20 a minute per robot): a retry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Callable

import httpx

from cloud.notify.channel import Delivered, GiveUp, Notice, Outcome, Retry, request_json

_RATE_LIMITED = 130101
_TEMPORARY = {-1: "system busy", _RATE_LIMITED: "sending too fast"}


def sign(timestamp_ms: int, secret: str) -> str:
    """The ``sign`` query value (already URL-encoded, as DingTalk's own examples produce it)."""
    msg = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest).decode("ascii"))


class DingTalkRobot:
    name = "dingtalk_robot"

    def __init__(
        self,
        *,
        url: str,
        client: httpx.AsyncClient,
        secret: str = "",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._secret = secret
        self._client = client
        self._wall = wall_clock

    def __repr__(self) -> str:
        return "DingTalkRobot(<url redacted>)"

    def signed_url(self) -> str:
        if not self._secret:
            return self._url
        ms = int(self._wall() * 1000)
        sep = "&" if "?" in self._url else "?"
        return f"{self._url}{sep}timestamp={ms}&sign={sign(ms, self._secret)}"

    @staticmethod
    def body(notice: Notice, to: str) -> dict[str, object]:
        mobiles = [m for m in to.split(",") if m]
        if notice.actions:
            text = "\n\n".join([f"### {notice.title}", *notice.lines, notice.reply_hint]).strip()
            return {
                "msgtype": "actionCard",
                "actionCard": {
                    "title": notice.title,
                    "text": text,
                    "btnOrientation": "1" if len(notice.actions) > 2 else "0",
                    "btns": [{"title": a.label, "actionURL": a.url} for a in notice.actions],
                },
            }
        content = notice.plain_text() + "".join(f" @{m}" for m in mobiles)
        return {
            "msgtype": "text",
            "text": {"content": content},
            "at": {"atMobiles": mobiles, "isAtAll": False},
        }

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        # the URL is built by hand: ``sign`` is already URL-encoded and must not be encoded twice
        data = await request_json(self._client, "POST", self.signed_url(), json=self.body(notice, to))
        if not isinstance(data, dict):
            return data
        code = int(data.get("errcode", 0))
        if code == 0:
            return Delivered()
        message = str(data.get("errmsg", ""))[:120]
        if code in _TEMPORARY:
            return Retry(
                f"DingTalk errcode {code} ({_TEMPORARY[code]}): {message}",
                60.0 if code == _RATE_LIMITED else None,
            )
        return GiveUp(f"DingTalk errcode {code}: {message}")
