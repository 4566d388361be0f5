"""Fake Aliyun RPC endpoint for ``SendSms`` (dysmsapi) and ``SingleCallByTts`` (dyvmsapi).

Recomputes signature v1 over every parameter except ``Signature`` (with the HTTP method of the request),
refuses a timestamp more than 15 minutes off and a reused ``SignatureNonce`` (replay), as Aliyun does.
Faults: ``rate_limit`` (``isv.BUSINESS_LIMIT_CONTROL``), ``throttling`` (``Throttling.User``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from datetime import UTC, datetime

from tests.fakes.base import Answer, FakeProvider, Request


def _pe(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


class FakeAliyun(FakeProvider):
    def __init__(self, *, access_key_id: str = "LTAI-test", access_key_secret: str = "aliyun-secret") -> None:
        super().__init__()
        self.key_id, self.secret = access_key_id, access_key_secret
        self.nonces: set[str] = set()
        self.sms: list[dict[str, str]] = []
        self.calls: list[dict[str, str]] = []

    def _expected(self, method: str, params: dict[str, str]) -> str:
        canonical = "&".join(f"{_pe(k)}={_pe(v)}" for k, v in sorted(params.items()) if k != "Signature")
        to_sign = f"{method}&%2F&{_pe(canonical)}"
        return base64.b64encode(
            hmac.new((self.secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
        ).decode()

    def handle(self, req: Request, fault: str) -> Answer:
        params = req.form() if req.method == "POST" else dict(req.query)
        request_id = f"req-{len(self.requests)}"
        if params.get("AccessKeyId") != self.key_id:
            return 404, {
                "Code": "InvalidAccessKeyId.NotFound",
                "Message": "Specified access key is not found.",
                "RequestId": request_id,
            }
        if params.get("Signature") != self._expected(req.method, params):
            return 400, {
                "Code": "SignatureDoesNotMatch",
                "Message": "Specified signature is not matched.",
                "RequestId": request_id,
            }
        try:
            ts = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        except (KeyError, ValueError):
            return 400, {
                "Code": "MissingTimestamp",
                "Message": "Timestamp is mandatory",
                "RequestId": request_id,
            }
        if abs(time.time() - ts) > 900:
            return 400, {"Code": "InvalidTimeStamp.Expired", "Message": "expired", "RequestId": request_id}
        nonce = params.get("SignatureNonce", "")
        if nonce in self.nonces:
            return 400, {"Code": "SignatureNonceUsed", "Message": "nonce used", "RequestId": request_id}
        self.nonces.add(nonce)
        if fault == "rate_limit":
            return 200, {
                "Code": "isv.BUSINESS_LIMIT_CONTROL",
                "Message": "触发分钟级流控Permits:1",
                "RequestId": request_id,
            }
        if fault == "throttling":
            return 200, {
                "Code": "Throttling.User",
                "Message": "Request was denied due to user flow control.",
                "RequestId": request_id,
            }
        action = params.get("Action")
        if action == "SendSms":
            number = params.get("PhoneNumbers", "")
            if not (number.isdigit() and len(number) == 11):
                return 200, {
                    "Code": "isv.MOBILE_NUMBER_ILLEGAL",
                    "Message": "非法手机号",
                    "RequestId": request_id,
                }
            self.sms.append(params)
            self.accept(req)
            return 200, {
                "Code": "OK",
                "Message": "OK",
                "BizId": f"biz-{len(self.sms)}",
                "RequestId": request_id,
            }
        if action == "SingleCallByTts":
            self.calls.append(params)
            self.accept(req)
            return 200, {
                "Code": "OK",
                "Message": "OK",
                "CallId": f"call-{len(self.calls)}",
                "RequestId": request_id,
            }
        return 400, {"Code": "InvalidAction.NotFound", "Message": action or "", "RequestId": request_id}
