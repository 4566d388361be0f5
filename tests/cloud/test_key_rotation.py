"""Rotation of the key that seals personal data, on SQLite and PostgreSQL (docs/privacy.md, Key management).

``vigil cloud key add`` -> ``rotate`` -> ``retire``: every sealed value (wearer documents, contacts'
phones, residents' contacts) ends under the new key and stays readable at every step, an interrupted
rotation leaves every row readable and resumes, retiring refuses while a value still needs an old key,
message links follow the rotation (links in flight keep working until they expire: test_link_key_rotation.py)
and the blind-index root does not change.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select

import vigil_cli
from cloud import privacy
from cloud.auth import Credentials
from cloud.crypto import KeyRing, SecretBox, key_id, load_or_create_key
from cloud.db import Database, Device, upgrade_head
from cloud.errors import ConfigError, ConflictError
from cloud.loop.models import AuditEntry, Incident
from cloud.notify.links import derive_link_key
from cloud.notify.models import Contact
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import T0

ROOT = Path(__file__).resolve().parents[2]
N_DEVICES, N_USERS, N_INCIDENTS = 7, 3, 4
TOTAL = N_DEVICES + N_USERS + N_INCIDENTS


class Sealed:
    def __init__(self, url: str, key_file: Path, expected: dict[tuple[str, object], dict[str, str]]) -> None:
        self.url, self.key_file, self.expected = url, key_file, expected
        self.db = Database(url)

    def values(self) -> dict[tuple[str, object], str]:
        """Every sealed value as stored: (column name, primary key) -> token."""
        out = {}
        with self.db.read() as s:
            for name, pk, col in privacy.sealed_columns():
                for k, tok in s.execute(select(pk, col).where(col.is_not(None))):
                    out[(name, k)] = tok
        return out

    def assert_all_open(self, ring: KeyRing) -> None:
        box = SecretBox(ring)
        got = {k: box.open(tok) for k, tok in self.values().items()}
        assert got == self.expected

    def census(self) -> dict[str, int]:
        return privacy.census(self.db, load_or_create_key(self.key_file))


@pytest.fixture
def sealed(db_url: str, tmp_path: Path) -> Iterator[Sealed]:
    """A database at head with sealed values in every sealed column, under the first key of ``key_file``."""
    key_file = tmp_path / "keys" / "vigil-secret.key"
    box = SecretBox(load_or_create_key(key_file))
    upgrade_head(db_url, secret_key_file=key_file)
    db = Database(db_url)
    expected: dict[tuple[str, object], dict[str, str]] = {}
    creds = Credentials(db, rotation_grace_s=0)
    users = [creds.add_user(f"u{i}", "operator", now=T0) for i in range(N_USERS)]
    assert len(users) == N_USERS
    with db.write() as s:
        for i in range(N_DEVICES):
            doc = {"wearer_name": f"张{i}", "wearer_phone": f"1381234{i:04d}", "address": f"5号楼{i}01室"}
            dev_id = f"band-{i:02d}"
            s.add(
                Device(
                    device_id=dev_id, kind="wristband", interval_s=300.0, created_at=T0, seq_gaps_total=0,
                    readings_total=0, private_enc=box.seal(doc),
                )
            )  # fmt: skip
            expected[("devices.private_enc", dev_id)] = doc
        for i in range(N_INCIDENTS):
            doc = {"phone": f"1390000{i:04d}"}
            inc = Incident(
                group_key=f"g{i}", group_rule="r", stage="closed", source="manual", kind="report",
                event_type="report", grade=3, urgency="normal", created_at=T0, stage_entered_at=T0,
                updated_at=T0, is_open=False, closed_at=T0, reporter_contact_enc=box.seal(doc),
            )  # fmt: skip
            s.add(inc)
            s.flush()
            expected[("loop_incidents.reporter_contact_enc", inc.id)] = doc
    with db.write() as s:
        from cloud.db.models import User

        for u in s.scalars(select(User).order_by(User.id)):
            doc = {"phone": f"1370000{u.id:04d}", "email": f"{u.username}@example.cn"}
            s.add(Contact(user_id=u.id, private_enc=box.seal(doc), updated_at=T0))
            expected[("notify_contacts.private_enc", u.id)] = doc
    db.close()
    out = Sealed(db_url, key_file, expected)
    yield out
    out.db.close()


def _cli(capsys: pytest.CaptureFixture[str], s: Sealed, *argv: str) -> tuple[int, str, str]:
    code = vigil_cli.main(
        ["cloud", "key", *argv, "--database-url", s.url, "--secret-key-file", str(s.key_file)]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_add_rotate_retire_reseals_everything_and_keeps_the_link_root(
    sealed: Sealed, capsys: pytest.CaptureFixture[str]
) -> None:
    first = load_or_create_key(sealed.key_file)
    first_id, link_key = key_id(first.primary), derive_link_key(first)
    assert sealed.census() == {first_id: TOTAL}

    code, out, _ = _cli(capsys, sealed, "add")
    assert code == 0, out
    ring = load_or_create_key(sealed.key_file)
    new_id = key_id(next(e.key for e in ring.entries if e.role == "next"))
    assert key_id(ring.primary) == first_id  # an added key does not seal yet
    sealed.assert_all_open(ring)
    code, out, _ = _cli(capsys, sealed, "status")
    assert code == 0
    assert out.splitlines() == [
        f"primary\t{first_id}\tsealed values: {TOTAL}",
        f"hmac\t{first_id}\tsealed values: -",
        f"next\t{new_id}\tsealed values: 0",
    ]

    code, out, err = _cli(capsys, sealed, "rotate", "--batch", "3")
    assert code == 0, err
    ring = load_or_create_key(sealed.key_file)
    assert key_id(ring.primary) == new_id
    assert sealed.census() == {new_id: TOTAL, first_id: 0}
    assert f"devices.private_enc\tresealed {N_DEVICES}" in out
    sealed.assert_all_open(ring)

    code, out, _ = _cli(capsys, sealed, "retire")
    assert code == 0 and first_id in out
    ring = load_or_create_key(sealed.key_file)
    assert [e.role for e in ring.entries] == ["primary", "hmac"]
    assert ring.fernet_keys == (ring.primary,)
    sealed.assert_all_open(ring)
    old = Fernet(first.primary)
    for tok in sealed.values().values():
        with pytest.raises(InvalidToken):
            old.decrypt(tok.encode())
    # message links follow the rotation (tests/cloud/test_link_key_rotation.py); the blind-index root stays
    assert derive_link_key(ring) != link_key and bytes(ring) == first.primary
    assert stat.S_IMODE(os.stat(sealed.key_file).st_mode) == 0o600

    with sealed.db.read() as s:
        rows = s.execute(select(AuditEntry.action, AuditEntry.target).order_by(AuditEntry.id)).all()
        details = " ".join(str(d) for d in s.scalars(select(AuditEntry.detail)))
    assert [tuple(r) for r in rows] == [
        ("key.add", new_id),
        ("key.rotate", new_id),
        ("key.reseal", new_id),
        ("key.retire", first_id),
    ]
    for key in (first.primary, ring.primary):  # ids only, never a key, in the audit log or the output
        assert key.decode() not in details + out


def test_interrupted_rotation_leaves_every_row_readable_and_resumes(sealed: Sealed) -> None:
    first_id = key_id(load_or_create_key(sealed.key_file).primary)
    privacy.add_next_key(sealed.key_file)
    ring, _, new_id = privacy.promote_next_key(sealed.key_file)
    batches = []

    def killed_after_two(column: str, n: int) -> None:
        batches.append(n)
        if len(batches) == 2:
            raise KeyboardInterrupt  # the operator's Ctrl-C (or a kill) between two batches

    with pytest.raises(KeyboardInterrupt):
        privacy.reseal(sealed.db, ring, batch=2, after_batch=killed_after_two)
    assert sealed.census() == {new_id: 4, first_id: TOTAL - 4}
    sealed.assert_all_open(ring)  # half old, half new: all readable with the ring every process has

    with pytest.raises(ConflictError, match=f"{TOTAL - 4} value\\(s\\) sealed under {first_id}"):
        privacy.retire_old_keys(sealed.db, sealed.key_file)
    assert first_id in {key_id(k) for k in load_or_create_key(sealed.key_file).fernet_keys}

    report = privacy.reseal(sealed.db, ring, batch=2)  # resumes: only what is left
    assert report.total == TOTAL - 4
    assert sum(report.already.values()) == 4
    _, retired = privacy.retire_old_keys(sealed.db, sealed.key_file)
    assert retired == [first_id]
    sealed.assert_all_open(load_or_create_key(sealed.key_file))


def test_kill_9_mid_rotation_leaves_every_row_readable(sealed: Sealed, tmp_path: Path) -> None:
    """``vigil cloud key rotate`` killed with SIGKILL half-way, one row per transaction."""
    box = SecretBox(load_or_create_key(sealed.key_file))
    n_more = 3000
    with sealed.db.write() as s:
        for i in range(n_more):
            doc = {"wearer_name": f"王{i}", "wearer_phone": f"1350000{i:04d}"}
            s.add(
                Device(
                    device_id=f"bulk-{i:05d}", kind="wristband", interval_s=300.0, created_at=T0,
                    seq_gaps_total=0, readings_total=0, private_enc=box.seal(doc),
                )
            )  # fmt: skip
            sealed.expected[("devices.private_enc", f"bulk-{i:05d}")] = doc
    privacy.add_next_key(sealed.key_file)
    ring = load_or_create_key(sealed.key_file)
    new = Fernet(next(e.key for e in ring.entries if e.role == "next"))

    def resealed() -> int:
        n = 0
        for tok in sealed.values().values():
            try:
                new.decrypt(tok.encode())
            except InvalidToken:
                continue
            n += 1
        return n

    argv = ["cloud", "key", "rotate", "--batch", "1", "--database-url", sealed.url]
    argv += ["--secret-key-file", str(sealed.key_file)]
    code = "import sys, vigil_cli; sys.exit(vigil_cli.main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "rotate.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60.0
        while resealed() < 20:  # well under way (a few thousand one-row transactions to go)
            assert proc.poll() is None, (tmp_path / "rotate.log").read_text()
            assert time.monotonic() < deadline, "rotation made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = resealed()
    assert 20 <= done < TOTAL + n_more  # killed half-way: some rows under each key
    ring = load_or_create_key(sealed.key_file)  # the file was replaced whole before the re-seal began
    assert [e.role for e in ring.entries] == ["primary", "old", "hmac"]
    sealed.assert_all_open(ring)
    report = privacy.reseal(sealed.db, ring)
    assert report.total == TOTAL + n_more - done
    privacy.retire_old_keys(sealed.db, sealed.key_file)
    sealed.assert_all_open(load_or_create_key(sealed.key_file))


def test_a_value_sealed_by_a_host_on_the_old_file_blocks_retire_until_resealed(sealed: Sealed) -> None:
    """A host not yet restarted after the rotation still seals under the old primary."""
    stale = load_or_create_key(sealed.key_file)  # what that host loaded at its start (old primary, no next)
    privacy.add_next_key(sealed.key_file)
    ring, old_id, _ = privacy.promote_next_key(sealed.key_file)
    privacy.reseal(sealed.db, ring)
    doc = {"wearer_name": "李四", "wearer_phone": "13700001111"}
    with sealed.db.write() as s:
        dev = s.get(Device, "band-00")
        assert dev is not None
        dev.private_enc = SecretBox(stale).seal(doc)
    sealed.expected[("devices.private_enc", "band-00")] = doc

    with pytest.raises(ConflictError, match=f"1 value\\(s\\) sealed under {old_id}"):
        privacy.retire_old_keys(sealed.db, sealed.key_file)
    assert privacy.reseal(sealed.db, ring).total == 1
    privacy.retire_old_keys(sealed.db, sealed.key_file)
    sealed.assert_all_open(load_or_create_key(sealed.key_file))


def test_refusals(sealed: Sealed, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _cli(capsys, sealed, "rotate")
    assert code == 1 and "no next key" in err  # rotate needs a key every host already has
    _cli(capsys, sealed, "add")
    code, _, err = _cli(capsys, sealed, "add")
    assert code == 1 and "already waiting" in err
    code, out, _ = _cli(capsys, sealed, "retire")
    assert code == 0 and "no old key" in out
    missing = tmp_path / "elsewhere" / "key"
    code = vigil_cli.main(
        ["cloud", "key", "status", "--database-url", sealed.url, "--secret-key-file", str(missing)]
    )
    assert code == 1 and "does not exist" in capsys.readouterr().err
    assert not missing.exists()  # a key command never creates a key


def test_key_file_format(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.key"
    key = Fernet.generate_key()
    legacy.write_bytes(key + b"\n")
    legacy.chmod(0o600)
    ring = load_or_create_key(legacy)
    assert bytes(ring) == key and ring.primary == key and ring.fernet_keys == (key,)
    assert "KeyRing" in repr(ring) and key.decode() not in repr(ring)

    bad = tmp_path / "bad.key"
    bad.write_text(f"spare {key.decode()}\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="line 1: unknown role 'spare'"):
        load_or_create_key(bad)
    two = tmp_path / "two.key"
    two.write_text(f"primary {key.decode()}\nprimary {Fernet.generate_key().decode()}\n")
    two.chmod(0o600)
    with pytest.raises(ConfigError, match="exactly one primary"):
        load_or_create_key(two)
