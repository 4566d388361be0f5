"""Aliyun SMS (``dysmsapi`` 2017-05-25 ``SendSms``) and voice (``dyvmsapi`` 2017-05-25 ``SingleCallByTts``).

Both are Aliyun "RPC" APIs signed with signature version 1.0: the parameters, sorted by name and
percent-encoded (RFC 3986: space as ``%20``, ``*`` as ``%2A``, ``~`` kept), joined with ``&``, form
``StringToSign = METHOD + "&%2F&" + percent_encode(canonical)``; the signature is
``base64(HMAC-SHA1(key=AccessKeySecret + "&", StringToSign))``. We POST the parameters as a form body, so
phone numbers never appear in a URL or an access log. The official SDK (``alibabacloud-dysmsapi20170525``)
pulls in a tea runtime of its own for one signed request; httpx does it in 40 lines.

Answers: ``{"Code":"OK","BizId":...}``; ``isv.BUSINESS_LIMIT_CONTROL`` (per-number flow control: about 1
a minute, 5 an hour, 10 a day) and ``Throttling.*`` are retries; a bad number, template or signature is
permanent. Templates and sign names must be approved by Aliyun in advance (``docs/notifications.md``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import httpx

from cloud.notify.channel import Delivered, GiveUp, Notice, Outcome, Retry, request_json

_RETRY_CODES = ("isv.BUSINESS_LIMIT_CONTROL", "Throttling", "ServiceUnavailable", "InternalError")


def percent_encode(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))
    return f"{method.upper()}&%2F&{percent_encode(canonical)}"


def sign_rpc(method: str, params: Mapping[str, str], access_key_secret: str) -> str:
    """Signature v1 of an RPC request (``Signature`` itself must not be in ``params``)."""
    mac = hmac.new((access_key_secret + "&").encode(), string_to_sign(method, params).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


class AliyunRpc:
    """Signs and sends one RPC call; the SMS and voice channels each hold one."""

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        endpoint: str,
        client: httpx.AsyncClient,
        version: str = "2017-05-25",
        region: str = "cn-hangzhou",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._key_id = access_key_id
        self._secret = access_key_secret
        self._endpoint = endpoint
        self._version = version
        self._region = region
        self._client = client
        self._wall = wall_clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(access_key_id={self._key_id!r})"

    def signed_params(self, action: str, params: Mapping[str, str]) -> dict[str, str]:
        full = {
            "AccessKeyId": self._key_id,
            "Action": action,
            "Format": "JSON",
            "RegionId": self._region,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": datetime.fromtimestamp(self._wall(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": self._version,
            **params,
        }
        full["Signature"] = sign_rpc("POST", full, self._secret)
        return full

    async def call(self, action: str, params: Mapping[str, str], *, what: str) -> Outcome:
        data = await request_json(
            self._client, "POST", self._endpoint, data=self.signed_params(action, params)
        )
        if not isinstance(data, dict):
            return data
        code = str(data.get("Code", ""))
        if code == "OK":
            return Delivered(str(data.get("BizId") or data.get("CallId") or ""))
        message = str(data.get("Message", ""))[:160]
        if code.startswith(_RETRY_CODES):
            return Retry(f"Aliyun {what} {code}: {message}", 60.0)
        return GiveUp(f"Aliyun {what} {code or 'no Code'}: {message}")


class AliyunSms:
    """``to`` is a mainland mobile number; the template gets ``notice.params`` as TemplateParam."""

    name = "sms"

    def __init__(self, rpc: AliyunRpc, *, sign_name: str, template_code: str) -> None:
        self.rpc = rpc
        self._sign_name = sign_name
        self._template = template_code

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        params = {
            "PhoneNumbers": to,
            "SignName": self._sign_name,
            "TemplateCode": self._template,
            "TemplateParam": json.dumps(notice.params, ensure_ascii=False, separators=(",", ":")),
            "OutId": key[:64],
        }
        return await self.rpc.call("SendSms", params, what="SendSms")


class AliyunVoice:
    """A text-to-speech call (mainland numbers only), played ``play_times`` times."""

    name = "voice"

    def __init__(
        self, rpc: AliyunRpc, *, tts_code: str, called_show_number: str = "", play_times: int = 3
    ) -> None:
        self.rpc = rpc
        self._tts = tts_code
        self._show = called_show_number
        self._times = play_times

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        params = {
            "CalledNumber": to,
            "TtsCode": self._tts,
            "TtsParam": json.dumps(notice.params, ensure_ascii=False, separators=(",", ":")),
            "PlayTimes": str(self._times),
            "OutId": key[:64],
        }
        if self._show:
            params["CalledShowNumber"] = self._show
        return await self.rpc.call("SingleCallByTts", params, what="SingleCallByTts")
