"""Fake webhook receiver: checks Vigil's HMAC signature and timestamp, drops repeated delivery keys."""

from __future__ import annotations

import time

from cloud.notify.webhook import DELIVERY_HEADER, verify
from tests.fakes.base import Answer, FakeProvider, Request


class FakeWebhookReceiver(FakeProvider):
    def __init__(self, *, secret: str = "webhook-secret") -> None:
        super().__init__()
        self.secret = secret
        self.seen: set[str] = set()
        self.rejected: list[str] = []

    def handle(self, req: Request, fault: str) -> Answer:
        problem = verify(self.secret, req.headers, req.body, now=time.time())
        if problem:
            self.rejected.append(problem)
            return 401, {"error": problem}
        key = req.headers.get(DELIVERY_HEADER, "")
        if key not in self.seen:
            self.seen.add(key)
            self.accept(req)
        return 200, {"ok": True}
