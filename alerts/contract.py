"""The gateway-to-cloud contract, coded once and used by both sides (``docs/contract.md``).

A gateway sends :class:`UplinkBatch` documents, over HTTPS (``POST /api/v1/ingest/batches``) or MQTT
(``vigil/v1/gw/{gateway_id}/up``, QoS 1). The cloud answers with :class:`UplinkAck` only after the batch
is committed to durable storage (HTTP response body, or ``vigil/v1/gw/{gateway_id}/ack`` on MQTT). The
gateway deletes a record from its outbox only when it holds that acknowledgement.

Idempotency: ``batch_id`` is chosen by the gateway and reused on every retry of the same batch; the
cloud stores a batch once and answers a repeat with ``duplicate=True``. Records are additionally
de-duplicated by ``(device_id, seq, time)`` so the same frame heard by two gateways is stored once.

Telemetry is columnar (one block per device kind, one list per column) so both ends move it as numpy
arrays: about 30x less JSON work than a list of objects at 100,000 readings/s.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_serializer,
    model_validator,
)

from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind, ReadingBatch
from firmware_bridge.registry import spec

CONTRACT_VERSION: Literal[2] = 2
#: versions the cloud accepts. 2 adds per-record acceptance (``UplinkAck.refused``); a version-1 gateway
#: gets a version-1 ack (no refusal fields) and its refused records are reported on the cloud only.
SUPPORTED_VERSIONS = (1, 2)

MAX_RECORDS_PER_BATCH = 50_000
HTTP_PATH = "/api/v1/ingest/batches"


def mqtt_up_topic(gateway_id: str) -> str:
    return f"vigil/v1/gw/{gateway_id}/up"


def mqtt_alert_topic(gateway_id: str) -> str:
    """The alert lane: batches carrying alert steps, consumed by the cloud's own alert session so they
    never wait behind telemetry (docs/contract.md, "MQTT")."""
    return f"vigil/v1/gw/{gateway_id}/alert"


def mqtt_ack_topic(gateway_id: str) -> str:
    return f"vigil/v1/gw/{gateway_id}/ack"


IDENTIFIER_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=IDENTIFIER_PATTERN)]
MAX_UTC_SECONDS = 4_102_444_800  # 2100-01-01: a hard schema bound; the cloud bounds times by its clock
UTCSeconds = Annotated[float, Field(ge=0, le=MAX_UTC_SECONDS, description="UTC seconds since the epoch")]
#: at most this many :class:`Refusal` entries in one ack; the ``*_refused`` counts are always complete
MAX_REFUSALS_PER_ACK = 1000


class _Strict(BaseModel):
    # NaN / Infinity are refused everywhere (a JSON ``NaN`` literal is a 422 naming the field)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TelemetryBlock(_Strict):
    """Readings of one device kind as columns; ``channels`` must be exactly the kind's channel names.

    A block read from JSON holds Python lists. A block read from the binary body
    (:func:`alerts.uplink_body.decode_block`, via :meth:`from_columns`) holds its numeric columns as the
    validated numpy arrays themselves (``device_id`` stays a list of str): they read as sequences, and
    :meth:`to_batch` hands them over without a conversion. Equality compares the readings (either form),
    and serialising converts arrays back to lists (NaN -> null).
    """

    kind: DeviceKind
    device_id: list[Identifier]
    seq: list[Annotated[int, Field(ge=0, le=0xFFFFFFFF)]]
    time: list[UTCSeconds]
    battery_pct: list[Annotated[float, Field(ge=0, le=100)]]
    flags: list[Annotated[int, Field(ge=0, le=0xFFFFFFFF)]]
    fw_version: list[Annotated[int, Field(ge=0, le=0xFFFF)]]
    channels: dict[str, list[float | None]] = Field(description="channel name -> values; null = not measured")
    #: ``(the column objects, the ReadingBatch over them)`` of a block built from arrays: :meth:`to_batch`
    #: returns that batch only while every column is still the very same object (``model_copy(update=...)``
    #: replaces the ones it updates, and the batch is then built again from the columns)
    _built: tuple[tuple[object, ...], ReadingBatch] | None = PrivateAttr(default=None)

    def _columns(self) -> tuple[object, ...]:
        return (
            self.kind,
            self.device_id,
            self.seq,
            self.time,
            self.battery_pct,
            self.flags,
            self.fw_version,
            self.channels,
        )

    @model_validator(mode="after")
    def _columns_agree(self) -> Self:
        n = len(self.device_id)
        for name in ("seq", "time", "battery_pct", "flags", "fw_version"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name!r} has {len(getattr(self, name))} values, device_id has {n}")
        expected = spec(self.kind).channel_names
        if tuple(self.channels) != expected:
            raise ValueError(
                f"channels for {self.kind.value} must be {list(expected)}, got {list(self.channels)}"
            )
        for name, col in self.channels.items():
            if len(col) != n:
                raise ValueError(f"channel {name!r} has {len(col)} values, device_id has {n}")
        # NaN / Infinity in a channel are refused by the field validation itself (``allow_inf_nan=False``
        # applies to every float in the model, list items included: ``finite_number`` naming the value),
        # so no per-value Python loop here (it was a third of the validation time of a 2,000-reading block)
        return self

    @field_serializer("seq", "time", "battery_pct", "flags", "fw_version", mode="wrap")
    def _column_out(self, value: Any, handler: SerializerFunctionWrapHandler) -> Any:
        return handler(value.tolist() if isinstance(value, np.ndarray) else value)

    @field_serializer("channels", mode="wrap")
    def _channels_out(self, value: Any, handler: SerializerFunctionWrapHandler) -> Any:
        return handler({k: _nullable(v) if isinstance(v, np.ndarray) else v for k, v in value.items()})

    def __len__(self) -> int:
        return len(self.device_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TelemetryBlock):
            return NotImplemented
        a, b = self.to_batch(), other.to_batch()
        return (
            a.kind is b.kind
            and all(
                np.array_equal(getattr(a, c), getattr(b, c))
                for c in ("device_id", "seq", "time", "battery_pct", "flags", "fw_version")
            )
            and np.array_equal(a.values, b.values, equal_nan=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable columns: a block is not a dictionary key

    @classmethod
    def from_batch(cls, batch: ReadingBatch) -> TelemetryBlock:
        names = spec(batch.kind).channel_names
        vals = batch.values
        cols: dict[str, list[float | None]] = {}
        for j, name in enumerate(names):
            col = vals[:, j]
            finite = np.isfinite(col)
            if finite.all():
                cols[name] = col.tolist()
            else:
                cols[name] = [v if ok else None for v, ok in zip(col.tolist(), finite.tolist(), strict=True)]
        return cls.model_construct(
            kind=batch.kind,
            device_id=batch.device_id.tolist(),
            seq=batch.seq.tolist(),
            time=batch.time.tolist(),
            battery_pct=batch.battery_pct.tolist(),
            flags=batch.flags.tolist(),
            fw_version=batch.fw_version.tolist(),
            channels=cols,
        )

    @classmethod
    def from_columns(cls, batch: ReadingBatch, device_ids: list[str]) -> TelemetryBlock:
        """A block over arrays that were already validated against this model's rules (the binary body's
        decoder does that); ``device_ids`` is ``batch.device_id`` as a list of str. No list is built."""
        names = spec(batch.kind).channel_names
        block = cls.model_construct(
            kind=batch.kind,
            device_id=device_ids,
            seq=batch.seq,
            time=batch.time,
            battery_pct=batch.battery_pct,
            flags=batch.flags,
            fw_version=batch.fw_version,
            channels={name: batch.values[:, j] for j, name in enumerate(names)},
        )
        block._built = (block._columns(), batch)
        return block

    def to_batch(self) -> ReadingBatch:
        built = self._built
        if built is not None and all(a is b for a, b in zip(built[0], self._columns(), strict=True)):
            return built[1]
        names = spec(self.kind).channel_names
        n = len(self.device_id)
        values = np.empty((n, len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            values[:, j] = np.asarray(self.channels[name], dtype=np.float64)  # None -> nan
        return ReadingBatch(
            kind=self.kind,
            device_id=np.array(self.device_id, dtype=np.str_),
            seq=np.asarray(self.seq, dtype=np.uint32),
            time=np.asarray(self.time, dtype=np.float64),
            battery_pct=np.asarray(self.battery_pct, dtype=np.float64),
            flags=np.asarray(self.flags, dtype=np.uint32),
            values=values,
            fw_version=np.asarray(self.fw_version, dtype=np.uint16),
        )


def _nullable(col: npt.NDArray[np.float64]) -> list[float | None]:
    finite = np.isfinite(col)
    if finite.all():
        return col.tolist()  # type: ignore[no-any-return]
    return [v if ok else None for v, ok in zip(col.tolist(), finite.tolist(), strict=True)]


class AlertEvent(_Strict):
    """One lifecycle step (raised / updated / cleared) of one alert episode."""

    alert_id: Annotated[str, StringConstraints(min_length=3, max_length=160)]
    device_id: Identifier
    kind: DeviceKind
    event_type: EventType
    severity: Severity
    phase: AlertPhase
    episode_ms: Annotated[int, Field(ge=0, le=MAX_UTC_SECONDS * 1000)]
    time: UTCSeconds = Field(description="when the detector decided this step")
    frame_time: UTCSeconds = Field(description="receive time of the frame that caused it")
    value: float | None = None
    message: Annotated[str, StringConstraints(max_length=500)] = ""


_Count = Annotated[int, Field(ge=0, le=2**53)]
_Seconds = Annotated[float, Field(ge=0, le=1e10)]


class GatewayStatus(BaseModel):
    """A health snapshot piggy-backed on batches so the cloud can show gateway state.

    Unknown keys are ignored (a newer gateway may report more); every number is bounded and finite.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    version: Annotated[str, StringConstraints(max_length=40)] = ""
    uptime_s: _Seconds = 0.0
    outbox_depth: _Count = 0
    outbox_oldest_age_s: _Seconds = 0.0
    frames_total: _Count = 0
    rejects_total: _Count = 0
    quarantined_total: _Count = 0
    dead_letter_total: _Count = 0


class UplinkBatch(_Strict):
    contract_version: Literal[1, 2] = CONTRACT_VERSION
    batch_id: Annotated[str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
    gateway_id: Identifier
    sent_at: UTCSeconds
    telemetry: list[TelemetryBlock] = Field(default_factory=list)
    alerts: list[AlertEvent] = Field(default_factory=list)
    status: GatewayStatus | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        total = sum(len(b) for b in self.telemetry) + len(self.alerts)
        if total > MAX_RECORDS_PER_BATCH:
            raise ValueError(f"batch holds {total} records; the limit is {MAX_RECORDS_PER_BATCH}")
        return self

    @property
    def n_records(self) -> int:
        return sum(len(b) for b in self.telemetry) + len(self.alerts)

    @classmethod
    def wire(
        cls,
        *,
        batch_id: str,
        gateway_id: str,
        sent_at: float,
        telemetry: Sequence[bytes] = (),
        alerts: Sequence[bytes] = (),
        status: Mapping[str, Any] | None = None,
        contract_version: int = CONTRACT_VERSION,
    ) -> bytes:
        """The wire form of a batch whose records are already JSON (each written by its own model's
        ``model_dump_json``, as the gateway's outbox stores them): the envelope is this model's own
        serialisation, so the wire form is written in one place; ``model_validate_json`` reads it back.
        """
        head = cls.model_validate(
            {
                "contract_version": contract_version,
                "batch_id": batch_id,
                "gateway_id": gateway_id,
                "sent_at": sent_at,
                "status": None if status is None else GatewayStatus.model_validate(status),
            }
        ).model_dump_json(exclude={"telemetry", "alerts"})
        return (
            head[:-1].encode()
            + b',"telemetry":['
            + b",".join(telemetry)
            + b'],"alerts":['
            + b",".join(alerts)
            + b"]}"
        )


RefusalReason = Literal[
    "unknown_device",  # not in the cloud's registry: an installer must register it (or it is forged)
    "not_assigned",  # registered, but assigned to another gateway (a neighbour's device heard over the air)
    "wrong_kind",  # registered as another device kind than the record says
    "time_out_of_range",  # time in the cloud's future (beyond the allowed skew) or too far in its past
    "alert_id_mismatch",  # alert_id is not device_id/event_type/episode_ms
    "alert_not_owned",  # the alert exists and belongs to another device, kind or source (e.g. the cloud)
]
REFUSAL_REASONS: tuple[str, ...] = typing.get_args(RefusalReason)


class Refusal(BaseModel):
    """Records of a batch the cloud did not store, and why (contract version 2).

    Telemetry refusals are aggregated per ``(device_id, reason)`` with ``count`` readings; an alert refusal
    names one step (``alert_id``, ``phase``, ``time``). A refused record is final: re-sending it cannot
    succeed, so the gateway quarantines it and moves on.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    record: Literal["telemetry", "alert"]
    device_id: Annotated[str, StringConstraints(max_length=64)]
    reason: RefusalReason
    count: int = 1
    alert_id: str | None = None
    phase: AlertPhase | None = None
    time: float | None = None
    detail: Annotated[str, StringConstraints(max_length=300)] = ""


class UplinkAck(BaseModel):
    """Sent only after the batch is durably committed.

    Version 2: what was *not* stored is listed in ``refused`` (at most :data:`MAX_REFUSALS_PER_ACK`
    entries; ``telemetry_refused`` / ``alerts_refused`` always count all). Unknown keys are ignored so
    later additions stay compatible; :meth:`for_version` renders the document a gateway of an older
    contract version can parse.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_id: str
    duplicate: bool = False
    telemetry_stored: int = 0
    telemetry_duplicates: int = 0
    alerts_stored: int = 0
    committed_at: UTCSeconds
    telemetry_refused: int = 0
    alerts_refused: int = 0
    refused: list[Refusal] = Field(default_factory=list)
    #: the topic the answered copy arrived on: ``up`` (``vigil/v1/gw/{id}/up``), ``alert`` (the alert lane,
    #: ``.../alert``) or ``http``; ``None`` from a cloud that predates the field (and on HTTP). A gateway
    #: that published one batch on both MQTT topics learns from it which copy an ack answers.
    via: Literal["up", "alert", "http"] | None = None

    def for_version(self, contract_version: int) -> dict[str, object]:
        """The ack as a JSON-ready dict for a gateway speaking ``contract_version``. ``via`` is left out
        when ``None`` and always for version 1 (whose gateways refuse unknown keys)."""
        exclude = set() if self.via is not None else {"via"}
        if contract_version >= 2:
            return self.model_dump(mode="json", exclude=exclude)
        return self.model_dump(
            mode="json", exclude=exclude | {"telemetry_refused", "alerts_refused", "refused", "via"}
        )
