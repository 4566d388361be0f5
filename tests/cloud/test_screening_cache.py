"""Cached device authorisation: a registry change made anywhere is seen by every worker's next batch.

The ingest service caches each device's gateway and kind under the registry generation (a one-row counter
that database triggers move in the transaction of every device insert, delete and re-assignment). These
tests change the registry from *another process* (its own engine and connections, as another ``vigil
cloud`` worker or the CLI would) after the cache was filled, and check the very next batch is judged by
the new registry, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from alerts.contract import UplinkAck
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import CSV_HEADER, CSV_ROWS, GW1, GW2, MANHOLE_1, T0, Cloud, batch, readings

M = DeviceKind.MANHOLE
ROOT = Path(__file__).resolve().parents[2]
_OTHER_PROCESS = """
import sys
from cloud.crypto import SecretBox, load_or_create_key
from cloud.db import Database
from cloud.registry import Registry
url, key, op, arg = sys.argv[1:5]
db = Database(url)
try:
    registry = Registry(db, SecretBox(load_or_create_key(key)))
    if op == "delete":
        registry.delete(arg)
    else:
        registry.import_csv(arg, now=0.0)
finally:
    db.close()
"""


def in_another_process(cloud: Cloud, op: str, arg: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-c",
            _OTHER_PROCESS,
            cloud.settings.database_url,
            str(cloud.settings.secret_key_file),
            op,
            arg,
        ],
        cwd=ROOT,
        check=True,
        timeout=120,
    )


def manhole_1_row(gateway: str, kind: str = "manhole") -> str:
    row = CSV_ROWS[0].split(",")
    row[1], row[10] = kind, gateway
    return CSV_HEADER + "\n" + ",".join(row) + "\n"


def generation(cloud: Cloud) -> int:
    with cloud.state.db.read() as s:
        return int(s.execute(text("SELECT generation FROM registry_generation WHERE id = 1")).scalar_one())


async def send(cloud: Cloud, batch_id: str, seqs: list[int], gateway: str = GW1) -> UplinkAck:
    t0 = T0 + 60.0 * seqs[0]
    b = batch(batch_id, readings(M, MANHOLE_1, seqs, t0=t0), gateway_id=gateway)
    ack: UplinkAck = await cloud.state.ingest.ingest(b, gateway_id=gateway)
    return ack


async def test_device_reassigned_elsewhere_is_refused_on_the_next_batch(cloud: Cloud) -> None:
    first = await send(cloud, "batch-cache-01", [1, 2])  # fills the cache: MANHOLE_1 is GW1's
    assert (first.telemetry_stored, first.telemetry_refused) == (2, 0)
    in_another_process(cloud, "import", manhole_1_row(GW2))
    moved = await send(cloud, "batch-cache-02", [3, 4])
    assert (moved.telemetry_stored, moved.telemetry_refused) == (0, 2)
    assert [(r.device_id, r.reason) for r in moved.refused] == [(MANHOLE_1, "not_assigned")]
    new_owner = await send(cloud, "batch-cache-03", [3, 4], gateway=GW2)
    assert (new_owner.telemetry_stored, new_owner.telemetry_refused) == (2, 0)
    in_another_process(cloud, "import", manhole_1_row(GW2, kind="smoke_alarm"))
    rekinded = await send(cloud, "batch-cache-04", [5], gateway=GW2)
    assert [(r.device_id, r.reason) for r in rekinded.refused] == [(MANHOLE_1, "wrong_kind")]


async def test_device_deleted_elsewhere_is_refused_and_registered_again_is_accepted(cloud: Cloud) -> None:
    assert (await send(cloud, "batch-cache-11", [1])).telemetry_stored == 1
    in_another_process(cloud, "delete", MANHOLE_1)
    gone = await send(cloud, "batch-cache-12", [2])
    assert [(r.device_id, r.reason) for r in gone.refused] == [(MANHOLE_1, "unknown_device")]
    assert gone.telemetry_stored == 0
    # "unknown" was cached too: registering the device again must end that at once
    in_another_process(cloud, "import", manhole_1_row(GW1))
    back = await send(cloud, "batch-cache-13", [3])
    assert (back.telemetry_stored, back.telemetry_refused) == (1, 0)


async def test_only_registry_changes_move_the_generation(cloud: Cloud) -> None:
    before = generation(cloud)
    await send(cloud, "batch-cache-21", [1, 2, 3])  # last seen, sequence, counts: not the registry
    assert generation(cloud) == before
    in_another_process(cloud, "import", manhole_1_row(GW2))
    assert generation(cloud) > before
