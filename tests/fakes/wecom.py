"""Fake WeCom (企业微信) API: ``gettoken``, ``message/send`` (application messages) and group robots.

Checks what WeCom checks: corp id and secret for a token, a live token for every send (errcode 42001
once it expired, 40014 for a token it never issued), the agent id, and the robot key. Faults:
``expire_token`` (every issued token expires now), ``rate_limit`` (errcode 45009), ``busy`` (-1).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from tests.fakes.base import Answer, FakeProvider, MinuteWindow, Request


class FakeWeCom(FakeProvider):
    def __init__(
        self,
        *,
        corp_id: str = "ww-test-corp",
        corp_secret: str = "corp-secret",
        agent_id: int = 1000002,
        robot_key: str = "robot-key-1",
        expires_in: int = 7200,
    ) -> None:
        super().__init__()
        self.corp_id, self.corp_secret, self.agent_id = corp_id, corp_secret, agent_id
        self.robot_key = robot_key
        self.expires_in = expires_in
        self.tokens: dict[str, float] = {}  # token -> expiry (wall clock)
        self._n = itertools.count(1)
        self.robot_window = MinuteWindow(20)
        self.messages: list[dict[str, Any]] = []
        self.robot_messages: list[dict[str, Any]] = []

    def fault_applies(self, req: Request, fault: str) -> bool:
        return not req.path.endswith("/gettoken")  # faults hit sends; token fetches just work

    def handle(self, req: Request, fault: str) -> Answer:
        now = time.time()
        if fault == "expire_token":
            for t in self.tokens:
                self.tokens[t] = 0.0
        if req.path.endswith("/gettoken"):
            if req.query.get("corpid") != self.corp_id or req.query.get("corpsecret") != self.corp_secret:
                return 200, {"errcode": 40001, "errmsg": "invalid credential"}
            token = f"token-{next(self._n)}"
            self.tokens[token] = now + self.expires_in
            return 200, {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.expires_in}
        if req.path.endswith("/message/send"):
            token = req.query.get("access_token", "")
            if token not in self.tokens:
                return 200, {"errcode": 40014, "errmsg": "invalid access_token"}
            if self.tokens[token] <= now:
                return 200, {"errcode": 42001, "errmsg": "access_token expired"}
            if fault == "rate_limit":
                return 200, {"errcode": 45009, "errmsg": "api freq out of limit"}
            if fault == "busy":
                return 200, {"errcode": -1, "errmsg": "system busy"}
            body = req.json()
            if body.get("agentid") != self.agent_id:
                return 200, {"errcode": 40056, "errmsg": "invalid agentid"}
            if body.get("touser") == "nobody":
                return 200, {"errcode": 0, "errmsg": "ok", "invaliduser": "nobody"}
            self.messages.append(body)
            self.accept(req)
            return 200, {"errcode": 0, "errmsg": "ok", "msgid": f"msg-{len(self.messages)}"}
        if req.path.endswith("/webhook/send"):
            if req.query.get("key") != self.robot_key:
                return 200, {"errcode": 93000, "errmsg": "invalid webhook url"}
            if fault == "rate_limit" or not self.robot_window.allow(self.robot_key, now):
                return 200, {"errcode": 45009, "errmsg": "api freq out of limit"}
            self.robot_messages.append(req.json())
            self.accept(req)
            return 200, {"errcode": 0, "errmsg": "ok"}
        return 404, {"errcode": 404, "errmsg": "not found"}

    @property
    def api_url(self) -> str:
        return self.url + "/cgi-bin/"

    @property
    def robot_url(self) -> str:
        return f"{self.url}/cgi-bin/webhook/send?key={self.robot_key}"
