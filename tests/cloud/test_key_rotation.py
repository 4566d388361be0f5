"""Rotation of the key that seals personal data, on SQLite and PostgreSQL (docs/privacy.md, Key management).

``vigil cloud key add`` -> ``rotate`` -> ``retire``: every sealed value (wearer documents, contacts'
phones, residents' contacts) ends under the new key and stays readable at every step, an interrupted
rotation leaves every row readable and resumes, retiring refuses while a value still needs an old key,
message links follow the rotation (links in flight keep working until they expire: test_link_key_rotation.py)
and ``retire`` refuses within the longest link lifetime after ``rotate`` unless ``--void-links``.

The phone blind index (``notify_contacts.phone_hash``) rotates too: the fixture writes it as every version
before the index rotated did (``HMAC(HMAC(first key, "vigil/notify/blind-index/v1"), phone)``, the formula
of cloud/notify/service.py up to commit b04af3f), a contact is found by phone before, during (a ``rotate``
killed with SIGKILL half-way through the index) and after the rotation, ``retire`` refuses while an index
is under an old key, and afterwards the old key's hash of a phone finds nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select

import vigil_cli
from cloud import privacy
from cloud.auth import Credentials
from cloud.crypto import BlindIndex, KeyRing, SecretBox, key_id, load_or_create_key
from cloud.db import Database, Device, upgrade_head
from cloud.errors import ConfigError, ConflictError
from cloud.loop.models import AuditEntry, Incident
from cloud.notify.contacts import Contacts
from cloud.notify.links import derive_link_key
from cloud.notify.models import Contact, InboundSms, Report
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import T0

ROOT = Path(__file__).resolve().parents[2]
N_DEVICES, N_USERS, N_INCIDENTS = 7, 3, 4
TOTAL = N_DEVICES + N_USERS + N_INCIDENTS


def legacy_phone_hash(first_key: bytes, phone: str) -> str:
    """The blind index as written before it rotated (cloud/notify/service.py and contacts.py, b04af3f)."""
    hash_key = hmac.new(first_key, b"vigil/notify/blind-index/v1", hashlib.sha256).digest()
    return hmac.new(hash_key, phone.encode(), hashlib.sha256).hexdigest()


def contacts_of(s: Sealed, ring: KeyRing) -> Contacts:
    """What a cloud started with ``ring`` looks a phone number up with (cloud/notify/service.py)."""
    return Contacts(s.db, SecretBox(ring), index=BlindIndex(ring))


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

    def phones(self) -> dict[str, int]:
        """Every contact's phone -> user id."""
        return {
            doc["phone"]: int(str(k))
            for (name, k), doc in self.expected.items()
            if name == "notify_contacts.private_enc"
        }

    def hashes(self) -> set[str]:
        with self.db.read() as s:
            return {
                str(h) for h in s.scalars(select(Contact.phone_hash).where(Contact.phone_hash.is_not(None)))
            }


@pytest.fixture
def sealed(db_url: str, tmp_path: Path) -> Iterator[Sealed]:
    """A database at head with sealed values in every sealed column, under the first key of ``key_file``."""
    key_file = tmp_path / "keys" / "vigil-secret.key"
    first = load_or_create_key(key_file)
    box = SecretBox(first)
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
            phone_hash = legacy_phone_hash(first.primary, doc["phone"])
            s.add(Contact(user_id=u.id, private_enc=box.seal(doc), phone_hash=phone_hash, updated_at=T0))
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


def test_add_rotate_retire_reseals_everything_and_rotates_links_and_the_blind_index(
    sealed: Sealed, capsys: pytest.CaptureFixture[str]
) -> None:
    first = load_or_create_key(sealed.key_file)
    first_id, link_key = key_id(first.primary), derive_link_key(first)
    assert sealed.census() == {first_id: TOTAL}
    old_hashes = sealed.hashes()
    assert len(old_hashes) == N_USERS

    code, out, _ = _cli(capsys, sealed, "add")
    assert code == 0, out
    ring = load_or_create_key(sealed.key_file)
    new_id = key_id(next(e.key for e in ring.entries if e.role == "next"))
    assert key_id(ring.primary) == first_id  # an added key does not seal yet
    sealed.assert_all_open(ring)
    code, out, _ = _cli(capsys, sealed, "status")
    assert code == 0
    assert out.splitlines() == [
        f"primary\t{first_id}\tsealed values: {TOTAL}\tphone indexes: {N_USERS}",
        f"next\t{new_id}\tsealed values: 0\tphone indexes: 0",
        "旧密钥下的电话索引 phone indexes not under the primary: 0",
    ]

    code, out, err = _cli(capsys, sealed, "rotate", "--batch", "3")
    assert code == 0, err
    ring = load_or_create_key(sealed.key_file)
    assert key_id(ring.primary) == new_id
    assert sealed.census() == {new_id: TOTAL, first_id: 0}
    assert f"devices.private_enc\tresealed {N_DEVICES}" in out
    assert f"notify_contacts.phone_hash\treindexed {N_USERS}" in out
    sealed.assert_all_open(ring)
    assert sealed.hashes().isdisjoint(old_hashes)
    code, out, _ = _cli(capsys, sealed, "status")
    assert f"primary\t{new_id}\tsealed values: {TOTAL}\tphone indexes: {N_USERS}" in out
    assert out.splitlines()[-1].endswith("not under the primary: 0")

    # links signed with the old key may live 8 days (link_ttl_s + reopen_window_s): refused without the flag
    code, out, err = _cli(capsys, sealed, "retire")
    assert code == 1 and "--void-links" in err and "CST" in err
    assert first_id in {key_id(k) for k in load_or_create_key(sealed.key_file).fernet_keys}
    code, out, _ = _cli(capsys, sealed, "retire", "--void-links")
    assert code == 0 and first_id in out and "void" in out
    ring = load_or_create_key(sealed.key_file)
    assert [e.role for e in ring.entries] == ["primary"]
    assert ring.fernet_keys == (ring.primary,) and bytes(ring) == ring.primary
    sealed.assert_all_open(ring)
    old = Fernet(first.primary)
    for tok in sealed.values().values():
        with pytest.raises(InvalidToken):
            old.decrypt(tok.encode())
    # message links and the blind index follow the rotation (tests/cloud/test_link_key_rotation.py)
    assert derive_link_key(ring) != link_key
    assert stat.S_IMODE(os.stat(sealed.key_file).st_mode) == 0o600
    book = contacts_of(sealed, ring)
    for phone, uid in sealed.phones().items():
        assert book.user_by_phone(phone) == uid
    assert contacts_of(sealed, first).user_by_phone(next(iter(sealed.phones()))) is None

    with sealed.db.read() as s:
        rows = s.execute(select(AuditEntry.action, AuditEntry.target).order_by(AuditEntry.id)).all()
        details = " ".join(str(d) for d in s.scalars(select(AuditEntry.detail)))
        retire_detail = s.scalars(select(AuditEntry.detail).where(AuditEntry.action == "key.retire")).one()
    assert [tuple(r) for r in rows] == [
        ("key.add", new_id),
        ("key.rotate", new_id),
        ("key.reseal", new_id),
        ("key.retire", first_id),
    ]
    assert retire_detail == {"void_links": True}
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
    assert [e.role for e in ring.entries] == ["primary", "old"]
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


# -- the phone blind index --------------------------------------------------------------------------------


def _add_contacts(s: Sealed, n: int) -> None:
    """``n`` more users with a bound phone, indexed as before the index rotated (one transaction)."""
    from cloud.db.models import User

    first = load_or_create_key(s.key_file)
    box = SecretBox(first)
    with s.db.write() as tx:
        users = [User(username=f"bulk{i:05d}", role="operator", created_at=T0) for i in range(n)]
        tx.add_all(users)
        tx.flush()
        for i, u in enumerate(users):
            doc = {"phone": f"1360{i:07d}"}
            tx.add(
                Contact(
                    user_id=u.id, private_enc=box.seal(doc),
                    phone_hash=legacy_phone_hash(first.primary, doc["phone"]), updated_at=T0,
                )
            )  # fmt: skip
            s.expected[("notify_contacts.private_enc", u.id)] = doc


def _all_found(book: Contacts, phones: dict[str, int]) -> None:
    missing = {p: uid for p, uid in phones.items() if book.user_by_phone(p) != uid}
    assert not missing, f"{len(missing)} of {len(phones)} contacts not found by phone"


def test_a_contact_is_found_by_phone_before_during_and_after_a_rotation_killed_mid_index(
    sealed: Sealed, tmp_path: Path
) -> None:
    """``vigil cloud key rotate`` SIGKILLed half-way through recomputing the phone index, one row per
    transaction: every contact is still found by its number, by a host already restarted on the rotated
    file and by one still on the file of before (``add`` done, ``rotate`` not yet seen); the resumed
    ``reseal`` finishes it; after ``retire`` the old key's hash of a phone finds nothing."""
    n_more = 1000
    _add_contacts(sealed, n_more)
    phones = sealed.phones()
    first = load_or_create_key(sealed.key_file)
    first_id = key_id(first.primary)
    known, unknown = "13700000001", "13999999999"
    assert phones[known] == 1
    now = time.time()
    with sealed.db.write() as s:  # the inbound-SMS log and residents' reports, hashed by the old version
        for phone in (known, known, unknown):
            s.add(InboundSms(provider="aliyun", phone_hash=legacy_phone_hash(first.primary, phone), text="1",
                             received_at=T0, result="ok"))  # fmt: skip
        for case, age in (("R1", 7200.0), ("R2", 60.0)):
            s.add(Report(case_number=case, category="other", description="d", lat=0.0, lon=0.0,
                         client_hash=legacy_phone_hash(first.primary, "203.0.113.7"), created_at=now - age,
                         promised_by=now, reopened=0))  # fmt: skip
    _all_found(contacts_of(sealed, first), phones)  # before

    privacy.add_next_key(sealed.key_file)
    before_rotate = load_or_create_key(sealed.key_file)  # what every host runs with after add + restart
    new_index = BlindIndex(next(e.key for e in before_rotate.entries if e.role == "next"))
    new_hashes = {new_index.hash(p) for p in phones}

    def reindexed() -> int:
        return len(sealed.hashes() & new_hashes)

    argv = ["cloud", "key", "rotate", "--batch", "1", "--database-url", sealed.url]
    argv += ["--secret-key-file", str(sealed.key_file)]
    code = "import sys, vigil_cli; sys.exit(vigil_cli.main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "rotate.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 120.0
        while reindexed() < 20:  # the values are re-sealed, the index well under way
            assert proc.poll() is None, (tmp_path / "rotate.log").read_text()
            assert time.monotonic() < deadline, "rotation made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = reindexed()
    assert 20 <= done < len(phones)  # killed half-way: some indexes under each key
    ring = load_or_create_key(sealed.key_file)
    new_id = key_id(ring.primary)
    assert privacy.index_census(sealed.db, ring) == {new_id: done, first_id: len(phones) - done}

    # during: found by a restarted host and by one still on the file of before the rotation
    _all_found(contacts_of(sealed, ring), phones)
    _all_found(contacts_of(sealed, before_rotate), phones)
    with pytest.raises(ConflictError, match=f"{len(phones) - done} phone index\\(es\\) under {first_id}"):
        privacy.retire_old_keys(sealed.db, sealed.key_file)

    report = privacy.reseal(sealed.db, ring, now=now)  # resumes: only what is left
    assert report.total == 0 and report.reindexed == len(phones) - done
    assert report.reports_forgotten == 1
    assert privacy.index_census(sealed.db, ring) == {new_id: len(phones), first_id: 0}
    assert privacy.reseal(sealed.db, ring, now=now).reindexed == 0  # nothing left to do
    _all_found(contacts_of(sealed, ring), phones)

    _, retired = privacy.retire_old_keys(sealed.db, sealed.key_file)
    assert retired == [first_id]
    final = load_or_create_key(sealed.key_file)
    _all_found(contacts_of(sealed, final), phones)
    # the leaked-old-key case: the old key's hash of a phone finds nothing any more
    leaked = {legacy_phone_hash(first.primary, p) for p in phones}
    assert sealed.hashes() & leaked == set()
    assert contacts_of(sealed, first).user_by_phone(known) is None
    with sealed.db.read() as s:
        inbound = [str(h) for h in s.scalars(select(InboundSms.phone_hash).order_by(InboundSms.id))]
        client = {str(r[0]): str(r[1]) for r in s.execute(select(Report.case_number, Report.client_hash))}
    # a bound number's log rows follow it; an unknown sender's old hash is re-wrapped under the new key
    # (it cannot be recomputed: the number is not stored; docs/privacy.md, tests/cloud/test_inbound_rewrap.py)
    assert inbound[:2] == [BlindIndex(final).hash(known)] * 2
    assert inbound[2] == privacy.rewrap_unbound(BlindIndex(final), legacy_phone_hash(first.primary, unknown))
    assert client == {"R1": "", "R2": legacy_phone_hash(first.primary, "203.0.113.7")}


def test_a_phone_bound_by_a_host_on_the_old_file_is_found_and_blocks_retire_until_resealed(
    sealed: Sealed,
) -> None:
    privacy.add_next_key(sealed.key_file)
    stale = load_or_create_key(sealed.key_file)  # a host restarted after add, not yet after rotate
    ring, old_id, new_id = privacy.promote_next_key(sealed.key_file)
    privacy.reseal(sealed.db, ring)
    assert privacy.index_census(sealed.db, ring) == {new_id: N_USERS, old_id: 0}
    contacts_of(sealed, stale).bind("u0", phone="+86 139-1111-2222", email="", now=T0)  # hashed under old

    for host in (stale, ring):
        assert contacts_of(sealed, host).user_by_phone("13911112222") == 1
    with pytest.raises(ConflictError, match=f"1 phone index\\(es\\) under {old_id}"):
        privacy.retire_old_keys(sealed.db, sealed.key_file)
    report = privacy.reseal(sealed.db, ring)
    assert report.reindexed == 1 and report.total == 1
    privacy.retire_old_keys(sealed.db, sealed.key_file)
    final = load_or_create_key(sealed.key_file)
    assert contacts_of(sealed, final).user_by_phone("13911112222") == 1
    leaked = Contacts(sealed.db, SecretBox(stale), index=BlindIndex(stale.primary))  # the old key alone
    assert leaked.user_by_phone("13911112222") is None


def test_a_key_file_of_before_the_index_rotated_keeps_its_hmac_line_until_retire(sealed: Sealed) -> None:
    """Rotated and retired by the previous version: ``primary K2`` + ``hmac K1``, indexes still under K1."""
    from cloud.crypto import KeyEntry, write_key_file

    first = load_or_create_key(sealed.key_file)
    k2 = Fernet.generate_key()
    ring = write_key_file(sealed.key_file, (KeyEntry("primary", k2), KeyEntry("hmac", first.primary),
                                            KeyEntry("old", first.primary)))  # fmt: skip
    privacy.reseal(sealed.db, ring)
    write_key_file(sealed.key_file, (KeyEntry("primary", k2), KeyEntry("hmac", first.primary)))
    with sealed.db.write() as s:  # as that version left it: the index never recomputed
        for c in s.scalars(select(Contact)):
            c.phone_hash = legacy_phone_hash(first.primary, SecretBox(ring).open(c.private_enc)["phone"])
    ring = load_or_create_key(sealed.key_file)
    _all_found(contacts_of(sealed, ring), sealed.phones())  # looked up under the hmac root too
    with pytest.raises(ConflictError, match=f"{N_USERS} phone index\\(es\\) under {key_id(first.primary)}"):
        privacy.retire_old_keys(sealed.db, sealed.key_file, links_live_s=8 * 86400.0)
    assert privacy.reseal(sealed.db, ring).reindexed == N_USERS
    _, dropped = privacy.retire_old_keys(sealed.db, sealed.key_file, links_live_s=8 * 86400.0)
    assert dropped == [key_id(first.primary)]  # no old key: no link to void, no wait
    final = load_or_create_key(sealed.key_file)
    assert [e.role for e in final.entries] == ["primary"]
    _all_found(contacts_of(sealed, final), sealed.phones())


def test_the_residents_rate_limit_counts_reports_hashed_under_the_old_key(sealed: Sealed) -> None:
    """A rotation in the middle of the hour does not give a client a fresh allowance."""
    from cloud.notify.actions import NullIncidentPort
    from cloud.notify.config import NotifyConfig
    from cloud.notify.links import LinkSigner
    from cloud.notify.photos import PhotoStore
    from cloud.notify.residents import ResidentDesk, TooManyRequestsError

    def desk(index: BlindIndex) -> ResidentDesk:
        config = NotifyConfig(report_limit_per_hour=2, report_area=[-90.0, -180.0, 90.0, 180.0])
        links = LinkSigner(b"k" * 32, base_url="https://v.example", ttl_s=3600.0)
        return ResidentDesk(sealed.db, links=links, photos=PhotoStore(sealed.db, max_bytes=1 << 20),
                            port=NullIncidentPort(), config=config, index=index)  # fmt: skip

    report: dict[str, Any] = {"category": "other", "description": "井盖松动", "lat": 39.98, "lon": 116.31}
    first = load_or_create_key(sealed.key_file)
    for i in range(2):
        desk(BlindIndex(first)).report(**report, client="203.0.113.9", now=T0 + i)
    privacy.add_next_key(sealed.key_file)
    ring, _, _ = privacy.promote_next_key(sealed.key_file)
    with pytest.raises(TooManyRequestsError):
        desk(BlindIndex(ring)).report(**report, client="203.0.113.9", now=T0 + 60)
    desk(BlindIndex(ring.primary)).report(**report, client="203.0.113.9", now=T0 + 60)  # primary alone: not
    desk(BlindIndex(ring)).report(**report, client="198.51.100.1", now=T0 + 61)  # another client: its own


# -- retire and links in flight --------------------------------------------------------------------------


def test_retire_waits_for_the_links_of_the_old_key_unless_told_to_void_them(
    sealed: Sealed, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    monkeypatch.delenv("VIGIL_DISPLAY_TZ", raising=False)
    assert _cli(capsys, sealed, "add")[0] == 0
    assert _cli(capsys, sealed, "rotate")[0] == 0
    with sealed.db.read() as s:
        rotated = s.scalars(select(AuditEntry.at).where(AuditEntry.action == "key.rotate")).one()
    eight_days = 24 * 3600.0 + 7 * 24 * 3600.0  # link_ttl_s + reopen_window_s, the defaults
    safe = datetime.fromtimestamp(rotated + eight_days, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    code, _, err = _cli(capsys, sealed, "retire")
    assert code == 1
    assert (
        f"请在 {safe} CST 之后再退役" in err and f"retire after {safe} CST" in err and "--void-links" in err
    )
    assert any(e.role == "old" for e in load_or_create_key(sealed.key_file).entries)

    # the notify config's lifetimes count: 1 h links, 1 h reopen window -> 2 h
    config = tmp_path / "notify.toml"
    config.write_text("link_ttl_s = 3600\nreopen_window_s = 3600\n")
    monkeypatch.setenv("VIGIL_CLOUD_NOTIFY_CONFIG_FILE", str(config))
    code, _, err = _cli(capsys, sealed, "retire")
    two_h = datetime.fromtimestamp(rotated + 7200, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    assert code == 1 and f"retire after {two_h} CST" in err
    with sealed.db.write() as s:  # the rotation was 2 h and a minute ago
        for e in s.scalars(select(AuditEntry).where(AuditEntry.action == "key.rotate")):
            e.at = time.time() - 7260
    code, out, err = _cli(capsys, sealed, "retire")
    assert code == 0, err
    assert "void" not in out
    with sealed.db.read() as s:
        detail = s.scalars(select(AuditEntry.detail).where(AuditEntry.action == "key.retire")).one()
    assert detail == {"void_links": False}


def test_retire_without_an_audited_rotation_counts_from_the_key_file(sealed: Sealed) -> None:
    privacy.add_next_key(sealed.key_file)
    privacy.promote_next_key(sealed.key_file)  # not through the CLI: nothing in the audit log
    privacy.reseal(sealed.db, load_or_create_key(sealed.key_file))
    mtime = sealed.key_file.stat().st_mtime
    assert privacy.last_rotation(sealed.db, sealed.key_file) == (mtime, "key file")
    with pytest.raises(ConflictError, match="per the key file"):
        privacy.retire_old_keys(sealed.db, sealed.key_file, links_live_s=3600.0, now=mtime + 3599)
    _, retired = privacy.retire_old_keys(
        sealed.db, sealed.key_file, links_live_s=3600.0, now=mtime + 10, void_links=True
    )
    assert len(retired) == 1


def test_status_names_a_phone_index_whose_contact_no_key_opens(
    sealed: Sealed, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = SecretBox(Fernet.generate_key())  # a key this file never held
    with sealed.db.write() as s:
        c = s.get(Contact, 1)
        assert c is not None
        c.private_enc = stranger.seal({"phone": "13700000001"})
    code, out, err = _cli(capsys, sealed, "status")
    assert code == 0, err
    assert "无法解密 unreadable\t-\tsealed values: 1" in out
    assert out.splitlines()[-1].endswith("not under the primary: 1")
