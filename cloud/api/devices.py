"""Devices: registry reads (masked by role), provisioning, CSV import, and reading history."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel

from cloud.api.deps import ERROR_RESPONSES, Admin, State, User
from cloud.auth import PERSONAL_DATA_ROLES
from cloud.errors import BadRequestError, PermissionDeniedError, StorageError
from cloud.registry import DEVICE_ID_RE, DeviceIn, DeviceOut
from cloud.timeseries import BackendError, TimeSeriesError
from firmware_bridge.kernel.records import DeviceKind

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=ERROR_RESPONSES)
MAX_OFFSET = 1_000_000_000  # a larger offset overflowed the database's integer (500); now a 422 naming it
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_RE.pattern, description="DevEUI, IMEI or serial")]


class ImportResult(BaseModel):
    imported: int


class ReadingsOut(BaseModel):
    device_id: str
    kind: DeviceKind
    start: float
    end: float
    downsampled: bool
    bucket_s: float | None
    time: list[float]
    values: dict[str, list[float | None]]
    values_min: dict[str, list[float | None]]
    values_max: dict[str, list[float | None]]


@router.get("", response_model=list[DeviceOut])
async def list_devices(
    caller: User,
    state: State,
    kind: DeviceKind | None = None,
    gateway_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DeviceOut]:
    return await asyncio.to_thread(
        state.registry.list_devices,
        caller.role,
        kind=kind.value if kind else None,
        gateway_id=gateway_id,
        limit=limit,
        offset=offset,
    )


@router.post("", response_model=DeviceOut, status_code=201, summary="Create or update one device")
async def put_device(device: DeviceIn, caller: Admin, state: State) -> DeviceOut:
    await asyncio.to_thread(state.registry.upsert, [device], now=state.clock.now())
    return await asyncio.to_thread(state.registry.get, device.device_id, caller.role)


@router.post(
    "/import",
    response_model=ImportResult,
    summary="Bulk import (CSV as written by `vigil simulate`); all rows or none",
    openapi_extra={
        "requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}
    },
    responses={400: {"description": "bad rows, each with its line number; nothing was imported"}},
)
async def import_devices(
    caller: Admin, state: State, body: Annotated[bytes, Body(media_type="text/csv")]
) -> ImportResult:
    n = await asyncio.to_thread(state.registry.import_csv, body, now=state.clock.now())
    return ImportResult(imported=n)


@router.get(
    "/{device_id}",
    response_model=DeviceOut,
    summary="One device, with last seen, last seq and lost-frame count (seq_gaps_total)",
)
async def get_device(device_id: DeviceId, caller: User, state: State) -> DeviceOut:
    return await asyncio.to_thread(state.registry.get, device_id, caller.role)


@router.delete(
    "/{device_id}",
    status_code=204,
    summary="Decommission a device (personal data deleted; readings and alerts kept)",
)
async def delete_device(device_id: DeviceId, caller: Admin, state: State) -> Response:
    await asyncio.to_thread(state.registry.delete, device_id)
    return Response(status_code=204)


@router.get(
    "/{device_id}/readings",
    response_model=ReadingsOut,
    summary="Reading history; full resolution up to max_points, bucketed (mean/min/max) beyond",
)
async def readings(
    device_id: DeviceId,
    caller: User,
    state: State,
    start: Annotated[
        float | None, Query(ge=0, le=4_102_444_800, description="UTC s; default end - 24 h")
    ] = None,
    end: Annotated[float | None, Query(ge=0, le=4_102_444_800, description="UTC s; default now")] = None,
    channels: Annotated[
        str | None, Query(max_length=500, description="comma-separated channel names")
    ] = None,
    max_points: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> ReadingsOut:
    dev = await asyncio.to_thread(state.registry.get, device_id, caller.role)
    if dev.kind is DeviceKind.WRISTBAND and caller.role not in PERSONAL_DATA_ROLES:
        # heart rate, SpO2 and position are health data: the roles that see the wearer in clear only
        raise PermissionDeniedError("a wristband's readings are health data (admin and dispatcher only)")
    end_t = end if end is not None else state.clock.now()
    start_t = start if start is not None else end_t - 86400.0
    if not end_t > start_t:
        raise BadRequestError(f"need start < end, got start={start_t} end={end_t}")
    names = [c.strip() for c in channels.split(",") if c.strip()] if channels else None
    try:
        series = await asyncio.to_thread(
            state.store.query, device_id, dev.kind, start_t, end_t, channels=names, max_points=max_points
        )
    except BackendError as exc:
        raise StorageError(f"time-series store failed: {exc}") from exc
    except TimeSeriesError as exc:  # unknown channel, bad range
        raise BadRequestError(str(exc)) from exc
    return ReadingsOut(
        device_id=device_id,
        kind=dev.kind,
        start=start_t,
        end=end_t,
        downsampled=series.downsampled,
        bucket_s=series.bucket_s,
        time=series.time.tolist(),
        values={k: _json_floats(v) for k, v in series.values.items()},
        values_min={k: _json_floats(v) for k, v in series.values_min.items()},
        values_max={k: _json_floats(v) for k, v in series.values_max.items()},
    )


def _json_floats(a: np.ndarray) -> list[float | None]:
    """NaN (not measured) -> null; JSON has no NaN."""
    out: list[float | None] = a.tolist()
    if np.isnan(a).any():
        out = [None if isinstance(v, float) and math.isnan(v) else v for v in out]
    return out
