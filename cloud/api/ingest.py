"""``POST /api/v1/ingest/batches``: the HTTP side of the gateway-to-cloud contract (docs/contract.md)."""

from __future__ import annotations

from fastapi import APIRouter

from alerts.contract import HTTP_PATH, UplinkAck, UplinkBatch
from cloud.api.deps import GatewayCaller, State

router = APIRouter(tags=["ingest"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "missing, unknown, rotated-out or revoked gateway token"},
    403: {
        "description": "the batch names another gateway, or holds devices not assigned to this gateway "
        "(`device_ids` lists them); nothing was stored"
    },
    413: {"description": "body larger than the configured limit"},
    503: {"description": "storage unavailable; retry the same batch later"},
}


@router.post(
    HTTP_PATH,
    response_model=UplinkAck,
    responses=_ERRORS,
    summary="Store an uplink batch; the ack is sent only after commit",
)
async def ingest_batch(batch: UplinkBatch, caller: GatewayCaller, state: State) -> UplinkAck:
    return await state.ingest.ingest(batch, gateway_id=caller.name)
