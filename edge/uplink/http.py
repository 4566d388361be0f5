"""HTTPS uplink: ``POST {url}/api/v1/ingest/batches`` with ``Authorization: Bearer <credential>``.

The cloud answers 2xx with an :class:`~alerts.contract.UplinkAck` only after the batch is committed; the
batch id (chosen and persisted by the outbox before the first attempt) makes retries idempotent, and is
also sent as ``Idempotency-Key``. httpx errors are translated into :mod:`edge.uplink.base` errors here.

Body: the columnar binary body (``application/vnd.vigil.uplink+msgpack``, ``uplink.body = "msgpack"``, the
default) or JSON (``"json"``). A cloud older than the binary body answers it 415, or 422 naming the whole
body (FastAPI could not read it as an object): the same batch is then re-sent as JSON at once, and this
uplink sends JSON from then on (until the gateway restarts; one extra round trip per start).
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path

import httpx

from alerts.contract import HTTP_PATH, UplinkAck
from alerts.uplink_body import JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE
from edge.outbox import BodyFormat, PendingBatch
from edge.uplink.base import (
    UplinkAuthError,
    UplinkInvalid,
    UplinkRejected,
    UplinkThrottled,
    UplinkTooLarge,
    UplinkUnavailable,
    parse_ack,
)

log = logging.getLogger(__name__)


def binary_refused(status_code: int, content: bytes) -> bool:
    """The cloud did not read the binary body as a format it knows: 415, or the 422 of a cloud that
    predates it (FastAPI could not read the body as an object at all: one error, ``loc == ["body"]``).
    A cloud that reads the binary body and finds it invalid names a field instead."""
    if status_code == 415:
        return True
    if status_code != 422:
        return False
    try:
        errors = json.loads(content).get("errors")
    except (ValueError, AttributeError):
        return False
    return (
        isinstance(errors, list)
        and len(errors) == 1
        and isinstance(errors[0], dict)
        and errors[0].get("loc") == ["body"]
        and str(errors[0].get("msg", "")).startswith("Input should be a valid dictionary")
    )


class HttpUplink:
    def __init__(
        self,
        url: str,
        credential: str,
        *,
        timeout_s: float = 10.0,
        ca_file: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        body: BodyFormat = "msgpack",
    ) -> None:
        self.endpoint = url.rstrip("/") + HTTP_PATH
        #: the body format sent; becomes "json" when the cloud does not read the binary body
        self.body: BodyFormat = body
        verify: ssl.SSLContext | bool = True
        if ca_file or client_cert:
            verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if client_cert:  # mutual TLS (VIGIL_CLOUD_TLS_CLIENT_CA on the cloud)
                verify.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            verify=verify,
            transport=transport,
            headers={
                "Authorization": f"Bearer {credential}",
                "User-Agent": "vigil-gateway",
            },
        )

    async def run(self) -> None:
        return None

    async def _post(self, batch: PendingBatch, body: bytes, content_type: str) -> httpx.Response:
        try:
            return await self._client.post(
                self.endpoint,
                content=body,
                headers={"Idempotency-Key": batch.batch_id, "Content-Type": content_type},
            )
        except httpx.TimeoutException as exc:
            raise UplinkUnavailable(f"timeout talking to {self.endpoint}", reason="timeout") from exc
        except httpx.TransportError as exc:
            raise UplinkUnavailable(f"cannot reach {self.endpoint}: {exc!r}", reason="connect") from exc

    async def send(self, batch: PendingBatch) -> UplinkAck:
        body = batch.body
        if self.body == "msgpack" and batch.content_type == MSGPACK_CONTENT_TYPE:
            r = await self._post(batch, body, MSGPACK_CONTENT_TYPE)
            if binary_refused(r.status_code, r.content):
                log.warning(
                    "%s does not read the binary uplink body (%d); sending JSON from now on",
                    self.endpoint,
                    r.status_code,
                )
                self.body = "json"
                body = batch.as_json()
                r = await self._post(batch, body, JSON_CONTENT_TYPE)
        else:
            body = batch.as_json()
            r = await self._post(batch, body, JSON_CONTENT_TYPE)
        if r.status_code == 429:
            try:
                retry_after = float(r.headers.get("Retry-After", "0"))
            except ValueError:
                retry_after = 0.0
            raise UplinkThrottled(
                f"{self.endpoint}: over quota, retry in {retry_after:g} s",
                reason="http_429",
                retry_after_s=retry_after,
            )
        if r.status_code >= 500 or r.status_code == 408:
            raise UplinkUnavailable(
                f"{self.endpoint} answered {r.status_code}", reason=f"http_{r.status_code}"
            )
        if r.status_code in (401, 403):
            # the cloud's reason (e.g. certificate_mismatch: docs/mtls.md) is what an installer needs
            raise UplinkAuthError(
                f"{self.endpoint} refused the credential ({r.status_code}){_why(r)}",
                reason=f"http_{r.status_code}",
            )
        if r.status_code == 413:
            raise UplinkTooLarge(
                f"{self.endpoint}: batch {batch.batch_id} too large ({len(body)} bytes)",
                reason="http_413",
            )
        if r.status_code in (400, 422):
            raise UplinkInvalid(
                f"{self.endpoint} refused batch {batch.batch_id} ({r.status_code}): {r.text[:300]}",
                reason=f"http_{r.status_code}",
            )
        if r.status_code >= 300:
            raise UplinkRejected(
                f"{self.endpoint} refused batch {batch.batch_id} ({r.status_code}): {r.text[:300]}",
                reason=f"http_{r.status_code}",
            )
        return parse_ack(r.content, batch.batch_id)

    async def aclose(self) -> None:
        await self._client.aclose()


def _why(r: httpx.Response) -> str:
    """``": <reason>: <detail>"`` from the cloud's error body (``{"detail", "reason"}``), or ``""``."""
    try:
        body = r.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[k])[:200] for k in ("reason", "detail") if isinstance(body.get(k), str) and body[k]]
    return ": " + ": ".join(parts) if parts else ""
