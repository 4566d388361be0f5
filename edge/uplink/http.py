"""HTTPS uplink: ``POST {url}/api/v1/ingest/batches`` with ``Authorization: Bearer <credential>``.

The cloud answers 2xx with an :class:`~alerts.contract.UplinkAck` only after the batch is committed; the
batch id (chosen and persisted by the outbox before the first attempt) makes retries idempotent, and is
also sent as ``Idempotency-Key``. httpx errors are translated into :mod:`edge.uplink.base` errors here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from alerts.contract import HTTP_PATH, UplinkAck
from edge.outbox import PendingBatch
from edge.uplink.base import (
    UplinkAuthError,
    UplinkInvalid,
    UplinkRejected,
    UplinkThrottled,
    UplinkTooLarge,
    UplinkUnavailable,
    parse_ack,
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
    ) -> None:
        self.endpoint = url.rstrip("/") + HTTP_PATH
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
                "Content-Type": "application/json",
                "User-Agent": "vigil-gateway",
            },
        )

    async def run(self) -> None:
        return None

    async def send(self, batch: PendingBatch) -> UplinkAck:
        try:
            r = await self._client.post(
                self.endpoint, content=batch.body, headers={"Idempotency-Key": batch.batch_id}
            )
        except httpx.TimeoutException as exc:
            raise UplinkUnavailable(f"timeout talking to {self.endpoint}", reason="timeout") from exc
        except httpx.TransportError as exc:
            raise UplinkUnavailable(f"cannot reach {self.endpoint}: {exc!r}", reason="connect") from exc
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
            raise UplinkAuthError(
                f"{self.endpoint} refused the credential ({r.status_code})", reason=f"http_{r.status_code}"
            )
        if r.status_code == 413:
            raise UplinkTooLarge(
                f"{self.endpoint}: batch {batch.batch_id} too large ({len(batch.body)} bytes)",
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
