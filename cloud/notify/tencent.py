"""Tencent Cloud SMS (``SendSms``, API version 2021-01-11), signed with TC3-HMAC-SHA256.

::

    CanonicalRequest = "POST\\n/\\n\\n" + "content-type:application/json; charset=utf-8\\nhost:{host}\\n"
                       + "\\ncontent-type;host\\n" + hex(sha256(payload))
    StringToSign     = "TC3-HMAC-SHA256\\n{ts}\\n{date}/{service}/tc3_request\\n"
                       + hex(sha256(CanonicalRequest))
    key              = HMAC(HMAC(HMAC("TC3" + SecretKey, date), service), "tc3_request")
    Authorization    = "TC3-HMAC-SHA256 Credential={SecretId}/{date}/{service}/tc3_request, "
                       "SignedHeaders=content-type;host, Signature=" + hex(HMAC(key, StringToSign))

``date`` is the UTC date of the timestamp. Answers ``{"Response":{"SendStatusSet":[{"Code":"Ok",...}]}}``
or ``{"Response":{"Error":{"Code":...}}}``; ``LimitExceeded.*`` / ``RequestLimitExceeded`` /
``InternalError`` are retries, everything else permanent. The SDK (``tencentcloud-sdk-python-sms``) would
work too; one signed POST keeps the dependency list short and the endpoint easy to point at a fake.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from cloud.notify.channel import Delivered, GiveUp, Notice, Outcome, Retry, request_json

CONTENT_TYPE = "application/json; charset=utf-8"
_RETRY_PREFIXES = ("LimitExceeded", "RequestLimitExceeded", "InternalError", "FailedOperation.Busy")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def tc3_signature(*, secret_key: str, service: str, host: str, timestamp: int, payload: str) -> str:
    date = datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")
    canonical = (
        f"POST\n/\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\n\ncontent-type;host\n"
        + hashlib.sha256(payload.encode()).hexdigest()
    )
    to_sign = (
        f"TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n"
        + hashlib.sha256(canonical.encode()).hexdigest()
    )
    key = _hmac(_hmac(_hmac(("TC3" + secret_key).encode(), date), service), "tc3_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def authorization(
    *, secret_id: str, secret_key: str, service: str, host: str, timestamp: int, payload: str
) -> str:
    date = datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")
    sig = tc3_signature(
        secret_key=secret_key, service=service, host=host, timestamp=timestamp, payload=payload
    )
    return (
        f"TC3-HMAC-SHA256 Credential={secret_id}/{date}/{service}/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={sig}"
    )


class TencentSms:
    """``to`` is a mobile number (``+86`` is added to bare 11-digit numbers)."""

    name = "sms"

    def __init__(
        self,
        *,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        sign_name: str,
        template_id: str,
        client: httpx.AsyncClient,
        endpoint: str = "https://sms.tencentcloudapi.com",
        region: str = "ap-guangzhou",
        param_order: tuple[str, ...] = ("event", "place", "time", "ref"),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._id = secret_id
        self._key = secret_key
        self._app = sdk_app_id
        self._sign = sign_name
        self._template = template_id
        self._client = client
        self._endpoint = endpoint
        self._host = urllib.parse.urlsplit(endpoint).netloc
        self._region = region
        self._order = param_order
        self._wall = wall_clock

    def __repr__(self) -> str:
        return f"TencentSms(secret_id={self._id!r})"

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        number = to if to.startswith("+") else "+86" + to
        payload = json.dumps(
            {
                "PhoneNumberSet": [number],
                "SmsSdkAppId": self._app,
                "SignName": self._sign,
                "TemplateId": self._template,
                "TemplateParamSet": [notice.params.get(k, "") for k in self._order],
                "SessionContext": key[:128],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        ts = int(self._wall())
        headers = {
            "Authorization": authorization(
                secret_id=self._id,
                secret_key=self._key,
                service="sms",
                host=self._host,
                timestamp=ts,
                payload=payload,
            ),
            "Content-Type": CONTENT_TYPE,
            "Host": self._host,
            "X-TC-Action": "SendSms",
            "X-TC-Version": "2021-01-11",
            "X-TC-Timestamp": str(ts),
            "X-TC-Region": self._region,
        }
        data = await request_json(
            self._client, "POST", self._endpoint, content=payload.encode(), headers=headers
        )
        if not isinstance(data, dict):
            return data
        response = data.get("Response") or {}
        error = response.get("Error")
        if error:
            code = str(error.get("Code", ""))
            message = str(error.get("Message", ""))[:160]
            if code.startswith(_RETRY_PREFIXES):
                return Retry(f"Tencent SendSms {code}: {message}", 60.0)
            return GiveUp(f"Tencent SendSms {code}: {message}")
        statuses = response.get("SendStatusSet") or []
        if not statuses:
            return GiveUp("Tencent SendSms answered without a SendStatusSet")
        status = statuses[0]
        code = str(status.get("Code", ""))
        if code == "Ok":
            return Delivered(str(status.get("SerialNo", "")))
        if code.startswith(_RETRY_PREFIXES):
            return Retry(f"Tencent SendSms {code}: {status.get('Message', '')}", 60.0)
        return GiveUp(f"Tencent SendSms {code}: {status.get('Message', '')}")
