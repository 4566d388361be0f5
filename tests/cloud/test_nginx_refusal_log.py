"""Reading nginx's refusal log (cloud/refusallog.py ``RefusalLog``): what the cloud missed, once each.

The file as nginx writes it (deploy/nginx/vigil-cloud.conf ``log_format vigil_cert_refusal``): only lines
the cloud never answered are taken (not its 403s, not nginx's own 429s), a half-written last line waits
for its end, garbage is skipped, a rotated file (``.1``, same inode) is finished before the new one, and a
truncated file is read from its start. The whole path with real nginx and the cloud is in
tests/cloud/test_nginx_audit.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cloud.refusallog import RefusalLog, parse_refusal_line


def line(request_id: str, upstream: str = "502", status: str = "502", verify: str = "NONE") -> bytes:
    row = {
        "msec": "1790000000.123",
        "request_id": request_id,
        "status": status,
        "upstream_status": upstream,
        "verify": verify,
        "subject": "",
        "serial": "",
        "fingerprint": "",
        "client": "192.0.2.7",
    }
    return json.dumps(row).encode() + b"\n"


def tick(log: RefusalLog) -> list[str]:
    """One read and the position saved, as the job does after its commit."""
    found, position = log.read()
    if position is not None:
        log._save_offset(*position)
    return [r.request_id for r in found]


def test_only_refusals_the_cloud_never_answered_are_taken() -> None:
    assert parse_refusal_line(line("a")) is not None  # 502: the cloud was down
    assert parse_refusal_line(line("b", upstream="504")) is not None
    assert parse_refusal_line(line("c", upstream="502, 403")) is None  # the retry reached it
    assert parse_refusal_line(line("d", upstream="403", status="403")) is None  # answered live
    assert parse_refusal_line(line("e", upstream="", status="429")) is None  # nginx's limit_req
    assert parse_refusal_line(b"not json") is None and parse_refusal_line(b"[1]") is None
    got = parse_refusal_line(line("f", verify="FAILED:certificate revoked"))
    assert got is not None and got.at == 1790000000.123 and got.verify == "FAILED:certificate revoked"


def test_positions_partial_lines_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "refusals.log"
    log = RefusalLog(None, path, tmp_path / "state" / "offset.json")  # type: ignore[arg-type]
    assert tick(log) == []  # no file yet
    path.write_bytes(line("a") + line("b", upstream="403", status="403") + b"garbage\n" + line("c")[:20])
    assert tick(log) == ["a"]  # the half-written line waits
    with path.open("ab") as f:
        f.write(line("c")[20:] + line("d"))
    assert tick(log) == ["c", "d"]
    assert tick(log) == []  # nothing twice
    # rotation (logrotate's create + nginx -s reopen): the rest of the old file first, then the new one
    with path.open("ab") as f:
        f.write(line("e"))
    os.rename(path, tmp_path / "refusals.log.1")
    path.write_bytes(line("f"))
    assert tick(log) == ["e"]
    assert tick(log) == ["f"]
    assert tick(log) == []
    # truncated in place (copytruncate): from its start
    path.write_bytes(line("g"))
    assert tick(log) == ["g"]
    # an unreadable position: from the start of the file (the job's request_id check keeps it once)
    (tmp_path / "state" / "offset.json").write_text("{")
    assert tick(log) == ["g"]
