"""HTTP endpoints for operator-platform pushes: China Telecom CTWing and China Mobile OneNET.

NB-IoT devices on operator SIMs often reach only the operator's platform, which POSTs each uplink to us.
The bodies are parsed by :mod:`firmware_bridge.operator_push` (sans-I/O); the raw device bytes are Vigil
payloads (``APPdata`` base64 on CTWing, a hex string ``value`` on OneNET) decoded with the kind's codec.

Each platform is treated as a *virtual gateway* named ``ctwing`` / ``onenet``: the readings go through
the same :class:`~cloud.ingest.IngestService` as a real gateway's batch, so de-duplication, gap
detection and last-seen work identically. A device is accepted when it is registered (by IMEI, mapped to
its canonical 16-hex ``device_id``) and assigned to that platform name or to no gateway. The batch id is a
hash of the body, so a platform re-sending the same push (it retries until it gets a 200) is stored once.

Authentication: CTWing carries a shared token in the subscription URL (``?token=``, compared in
constant time); OneNET signs with ``Base64(MD5(token + nonce + msg))``. An endpoint whose token is not
configured answers 404, so an unconfigured deployment exposes nothing.

Errors: a malformed body or payload gets a 400 with the reason; it is counted
(``vigil_cloud_push_messages_total``) and logged with its bytes (hex, first 256 bytes), never crashes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from sqlalchemy import select

from alerts.contract import TelemetryBlock, UplinkBatch
from cloud.api.deps import ERROR_RESPONSES, State
from cloud.api.state import CloudState
from cloud.db import Device
from cloud.errors import BadRequestError, NotFoundError, PermissionDeniedError
from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.records import DeviceKind, Reading, ReadingBatch
from firmware_bridge.operator_push import (
    DATA_REPORT,
    ONENET_DATAPOINT,
    parse_ctwing,
    parse_onenet,
    verify_onenet,
    verify_onenet_body,
)
from firmware_bridge.registry import kind_of_payload, spec

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/push", tags=["operator push"], responses=ERROR_RESPONSES)
CTWING, ONENET = "ctwing", "onenet"


class PushResult(BaseModel):
    stored: int
    duplicates: int = 0
    rejected: int = 0
    ignored: int = 0
    duplicate_push: bool = False


def _reject(state: CloudState, platform: str, reason: str, body: bytes, detail: str) -> BadRequestError:
    state.metrics.push_messages.labels(platform, reason).inc()
    log.warning(
        "push rejected",
        extra={
            "platform": platform,
            "reason": reason,
            "detail": detail,
            "bytes_hex": body[:256].hex(),
            "length": len(body),
        },
    )
    return BadRequestError(f"{platform} push rejected ({reason}): {detail}")


def _kinds(state: CloudState, ids: list[str]) -> dict[str, str]:
    with state.db.read() as s:
        return {
            d: k for d, k in s.execute(select(Device.device_id, Device.kind).where(Device.device_id.in_(ids)))
        }


def _decode(payload: bytes, device_id: str, t: float, registered_kind: str | None) -> Reading:
    kind = kind_of_payload(payload)
    if registered_kind is not None and kind.value != registered_kind:
        raise DecodeError(
            f"payload is a {kind.value} payload but {device_id} is a {registered_kind}", reason="kind"
        )
    return spec(kind).codec.decode(payload, device_id=device_id, time=t)


async def _store(state: CloudState, platform: str, body: bytes, readings: list[Reading]) -> PushResult:
    by_kind: dict[DeviceKind, list[Reading]] = {}
    for r in readings:
        by_kind.setdefault(r.kind, []).append(r)
    blocks = [TelemetryBlock.from_batch(ReadingBatch.from_readings(k, rs)) for k, rs in by_kind.items()]
    batch = UplinkBatch(
        batch_id=f"{platform[:2]}-{hashlib.sha256(body).hexdigest()[:40]}",
        gateway_id=platform,
        sent_at=state.clock.now(),
        telemetry=blocks,
    )
    ack = await state.ingest.ingest(batch, gateway_id=platform, allow_unassigned=True)
    for ref in ack.refused:  # assigned to a real gateway, or out of the time window: counted, not stored
        state.metrics.push_messages.labels(platform, ref.reason).inc(ref.count)
    if ack.telemetry_refused and not (ack.telemetry_stored or ack.telemetry_duplicates or ack.duplicate):
        ids = sorted({r.device_id for r in ack.refused})
        raise NotFoundError(f"device(s) {ids} are not registered for {platform}")
    state.metrics.push_messages.labels(platform, "stored").inc()
    return PushResult(
        stored=ack.telemetry_stored,
        duplicates=ack.telemetry_duplicates,
        duplicate_push=ack.duplicate,
        rejected=ack.telemetry_refused,
    )


def _check_time(state: CloudState, t: float) -> str | None:
    """Why a platform's timestamp is unusable (outside the cloud's window), or ``None``.

    A push stamped far in the future would move the device's ``last_seen`` beyond any silence check
    (a CTWing push with timestamp 1e30 made a device impossible to flag as silent)."""
    lo, hi = state.ingest.limits.time_window(state.clock.now())
    if lo <= t <= hi:
        return None
    return f"timestamp {t:.3f} is outside the cloud's window [{lo:.0f}, {hi:.0f}]"


def _check_ctwing_token(state: CloudState, token: str) -> None:
    expected = state.settings.ctwing_token
    if not expected:
        raise NotFoundError("CTWing push is not configured on this server")
    if not hmac.compare_digest(expected.encode(), token.encode()):
        state.metrics.push_messages.labels(CTWING, "bad_token").inc()
        raise PermissionDeniedError("wrong CTWing push token")


@router.post(
    "/ctwing",
    response_model=PushResult,
    summary="CTWing (China Telecom AEP) HTTP subscription push",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}
    },
)
async def ctwing_push(
    request: Request, state: State, token: Annotated[str, Query(max_length=256)] = ""
) -> PushResult:
    _check_ctwing_token(state, token)
    body = await request.body()
    try:
        msg = parse_ctwing(body)
    except DecodeError as exc:
        raise _reject(state, CTWING, exc.reason, body, str(exc)) from exc
    if msg.message_type != DATA_REPORT:
        state.metrics.push_messages.labels(CTWING, "ignored").inc()
        return PushResult(stored=0, ignored=1)
    if msg.payload is None:
        raise _reject(
            state,
            CTWING,
            "no_appdata",
            body,
            "only transparent (透传) products with payload.APPdata are supported",
        )
    device_id = msg.vigil_device_id or msg.device_id  # one id per device: docs/formats.md
    kinds = _kinds(state, [device_id])
    if device_id not in kinds:
        state.metrics.push_messages.labels(CTWING, "unknown_device").inc()
        raise NotFoundError(f"device {device_id} is not registered")
    bad_time = _check_time(state, msg.timestamp)
    if bad_time is not None:
        raise _reject(state, CTWING, "time_out_of_range", body, bad_time)
    try:
        reading = _decode(msg.payload, device_id, msg.timestamp, kinds[device_id])
    except DecodeError as exc:
        raise _reject(state, CTWING, exc.reason, msg.payload, str(exc)) from exc
    res = await _store(state, CTWING, body, [reading])
    return res.model_copy(update={"rejected": 0})


@router.get(
    "/onenet", response_class=PlainTextResponse, summary="OneNET URL verification: echoes msg if signed"
)
async def onenet_verify(
    state: State,
    msg: Annotated[str, Query(max_length=1000)],
    nonce: Annotated[str, Query(max_length=256)],
    signature: Annotated[str, Query(max_length=256)],
) -> PlainTextResponse:
    token = state.settings.onenet_token
    if not token:
        raise NotFoundError("OneNET push is not configured on this server")
    if not verify_onenet(token, msg, nonce, signature):
        state.metrics.push_messages.labels(ONENET, "bad_signature").inc()
        raise PermissionDeniedError("OneNET signature does not verify")
    return PlainTextResponse(msg)


@router.post(
    "/onenet",
    response_model=PushResult,
    summary="OneNET HTTP data push (signed)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}
    },
)
async def onenet_push(request: Request, state: State) -> PushResult:
    token = state.settings.onenet_token
    if not token:
        raise NotFoundError("OneNET push is not configured on this server")
    body = await request.body()
    if not verify_onenet_body(token, body):
        state.metrics.push_messages.labels(ONENET, "bad_signature").inc()
        raise PermissionDeniedError("OneNET push signature missing or wrong")
    rejects: list[DecodeError] = []
    try:
        messages = parse_onenet(body, rejects)
    except DecodeError as exc:
        raise _reject(state, ONENET, exc.reason, body, str(exc)) from exc
    data = [m for m in messages if m.type == ONENET_DATAPOINT]
    ignored = len(messages) - len(data)
    ids = sorted({m.vigil_device_id or m.dev_id for m in data})
    kinds = _kinds(state, ids) if ids else {}
    readings: list[Reading] = []
    unknown = 0
    for m in data:
        device_id = m.vigil_device_id or m.dev_id
        payload = m.payload_bytes()
        if payload is None:
            rejects.append(DecodeError(f"{device_id}: value is not a hex Vigil payload", reason="value"))
            continue
        if device_id not in kinds:
            unknown += 1
            continue
        bad_time = _check_time(state, m.at)
        if bad_time is not None:
            rejects.append(DecodeError(f"{device_id}: {bad_time}", reason="time_out_of_range"))
            continue
        try:
            readings.append(_decode(payload, device_id, m.at, kinds[device_id]))
        except DecodeError as exc:
            exc.data = payload
            rejects.append(exc)
    for err in rejects:
        state.metrics.push_messages.labels(ONENET, err.reason).inc()
        log.warning(
            "push message rejected",
            extra={
                "platform": ONENET,
                "reason": err.reason,
                "detail": str(err),
                "bytes_hex": (err.data or b"")[:256].hex(),
            },
        )
    if unknown:
        state.metrics.push_messages.labels(ONENET, "unknown_device").inc(unknown)
    if not readings:
        if rejects or unknown:
            raise BadRequestError(
                f"no usable data point in the push ({len(rejects)} malformed, {unknown} unknown device(s))"
            )
        return PushResult(stored=0, ignored=ignored)
    res = await _store(state, ONENET, body, readings)
    return res.model_copy(update={"rejected": res.rejected + len(rejects) + unknown, "ignored": ignored})
