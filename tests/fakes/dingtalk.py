"""Fake DingTalk custom robot with the "加签" security setting.

Verifies ``sign`` exactly as DingTalk documents it (recomputes HMAC-SHA256 over ``"{timestamp}\\n{secret}"``,
base64, compares with the URL-decoded query value), refuses a timestamp more than an hour off (errcode
310000) and a wrong access token (300001), and limits each robot to 20 messages a minute (errcode 130101).
Fault: ``rate_limit`` (130101 now).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from tests.fakes.base import Answer, FakeProvider, MinuteWindow, Request


class FakeDingTalk(FakeProvider):
    def __init__(
        self, *, access_token: str = "ding-token", secret: str = "SECtest-secret", per_minute: int = 20
    ) -> None:
        super().__init__()
        self.access_token, self.secret = access_token, secret
        self.window = MinuteWindow(per_minute)
        self.messages: list[dict[str, Any]] = []

    def handle(self, req: Request, fault: str) -> Answer:
        now = time.time()
        if req.query.get("access_token") != self.access_token:
            return 200, {"errcode": 300001, "errmsg": "token is not exist"}
        if self.secret:
            try:
                ts = int(req.query["timestamp"])
            except (KeyError, ValueError):
                return 200, {"errcode": 310000, "errmsg": "sign not match, missing timestamp"}
            if abs(now * 1000 - ts) > 3600 * 1000:
                return 200, {"errcode": 310000, "errmsg": "sign not match, timestamp is invalid"}
            digest = hmac.new(self.secret.encode(), f"{ts}\n{self.secret}".encode(), hashlib.sha256).digest()
            # parse_qsl already URL-decoded the value once, as DingTalk's server does
            if req.query.get("sign") != base64.b64encode(digest).decode():
                return 200, {"errcode": 310000, "errmsg": "sign not match"}
        if fault == "rate_limit" or not self.window.allow(self.access_token, now):
            return 200, {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}
        body = req.json()
        if body.get("msgtype") not in ("text", "markdown", "actionCard", "link", "feedCard"):
            return 200, {"errcode": 40035, "errmsg": "缺少参数 json"}
        self.messages.append(body)
        self.accept(req)
        return 200, {"errcode": 0, "errmsg": "ok"}

    @property
    def robot_url(self) -> str:
        return f"{self.url}/robot/send?access_token={self.access_token}"
