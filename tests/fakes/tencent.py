"""Fake Tencent Cloud SMS endpoint (``SendSms`` 2021-01-11), verifying TC3-HMAC-SHA256 as the API does.

Recomputes the canonical request from the received headers and body, checks ``X-TC-Timestamp`` within 5
minutes, the credential scope's date and service. Faults: ``rate_limit``
(``LimitExceeded.PhoneNumberThirtySecondLimit``), ``internal`` (``InternalError``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

from tests.fakes.base import Answer, FakeProvider, Request


def _h(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class FakeTencent(FakeProvider):
    def __init__(self, *, secret_id: str = "AKID-test", secret_key: str = "tencent-secret") -> None:
        super().__init__()
        self.secret_id, self.secret_key = secret_id, secret_key
        self.sms: list[dict[str, Any]] = []

    def _error(self, code: str, message: str) -> Answer:
        return 200, {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "r"}}

    def handle(self, req: Request, fault: str) -> Answer:
        h = {k.lower(): v for k, v in req.headers.items()}
        try:
            ts = int(h["x-tc-timestamp"])
            auth = h["authorization"]
            algo, rest = auth.split(" ", 1)
            parts = dict(p.strip().split("=", 1) for p in rest.split(","))
            secret_id, date, service, term = parts["Credential"].split("/")
        except (KeyError, ValueError):
            return self._error("AuthFailure.SignatureFailure", "malformed Authorization")
        if algo != "TC3-HMAC-SHA256" or term != "tc3_request" or secret_id != self.secret_id:
            return self._error("AuthFailure.SecretIdNotFound", "unknown secret id")
        if abs(time.time() - ts) > 300:
            return self._error("AuthFailure.SignatureExpire", "signature expired")
        if date != datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d"):
            return self._error("AuthFailure.SignatureFailure", "credential date does not match timestamp")
        signed = parts["SignedHeaders"].split(";")
        canonical_headers = "".join(
            f"{name}:{h[name].strip().lower() if name == 'content-type' else h[name].strip()}\n"
            for name in signed
        )
        canonical = "\n".join(
            [
                req.method,
                "/",
                req.headers.get("_raw_query", ""),
                canonical_headers,
                parts["SignedHeaders"],
                hashlib.sha256(req.body).hexdigest(),
            ]
        )
        to_sign = (
            f"{algo}\n{ts}\n{date}/{service}/tc3_request\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        key = _h(_h(_h(("TC3" + self.secret_key).encode(), date), service), "tc3_request")
        if hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() != parts["Signature"]:
            return self._error(
                "AuthFailure.SignatureFailure", "The provided credentials could not be validated."
            )
        if h.get("x-tc-action") != "SendSms":
            return self._error("InvalidAction", "no such action")
        if fault == "rate_limit":
            return 200, {
                "Response": {
                    "SendStatusSet": [
                        {
                            "Code": "LimitExceeded.PhoneNumberThirtySecondLimit",
                            "Message": "30 s limit",
                            "SerialNo": "",
                        }
                    ],
                    "RequestId": "r",
                }
            }
        if fault == "internal":
            return self._error("InternalError.Timeout", "internal timeout")
        body = req.json()
        self.sms.append(body)
        self.accept(req)
        return 200, {
            "Response": {
                "SendStatusSet": [
                    {
                        "Code": "Ok",
                        "Message": "send success",
                        "SerialNo": f"serial-{len(self.sms)}",
                        "PhoneNumber": body["PhoneNumberSet"][0],
                    }
                ],
                "RequestId": "r",
            }
        }
