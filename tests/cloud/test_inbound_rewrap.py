"""Inbound-SMS hashes of senders bound to no contact leave the old key at ``reseal`` (docs/privacy.md,
"The phone blind index rotates with the key"; cloud/privacy.py ``rewrap_unbound``).

Their number is not stored, so their hash cannot be computed again under the new key; ``reseal`` hashes
the old hash under the new primary instead (tagged with its key id). After a rotation a holder of the old
key can no longer confirm that a number texted the reply line; a sender's rows stay equal to each other;
a bound number's rows still follow the number; a second ``reseal`` changes nothing and a later rotation
re-wraps under its own key. On SQLite and PostgreSQL, with the database of tests/cloud/test_key_rotation.py.
"""

from __future__ import annotations

from sqlalchemy import select

from cloud import privacy
from cloud.crypto import BlindIndex, key_id, load_or_create_key
from cloud.notify.models import InboundSms
from tests.cloud.cloudkit import *  # noqa: F403  (the db_url fixture)
from tests.cloud.cloudkit import T0
from tests.cloud.test_key_rotation import Sealed, legacy_phone_hash, sealed

__all__ = ["sealed"]  # the fixture, imported to be used here

KNOWN, STRANGER, OTHER = "13700000001", "13999999999", "13888888888"


def log(s: Sealed) -> list[str]:
    with s.db.read() as db:
        return [str(h) for h in db.scalars(select(InboundSms.phone_hash).order_by(InboundSms.id))]


def texted(s: Sealed, hashes: list[str]) -> None:
    with s.db.write() as db:
        for h in hashes:
            db.add(
                InboundSms(provider="aliyun", phone_hash=h, text="1", received_at=T0, result="unknown_sender")
            )


def test_an_unbound_senders_hash_is_rewrapped_under_the_new_key(sealed: Sealed) -> None:
    first = load_or_create_key(sealed.key_file)
    assert sealed.phones()[KNOWN] == 1  # KNOWN is a contact's number; STRANGER and OTHER are nobody's
    old = {p: legacy_phone_hash(first.primary, p) for p in (KNOWN, STRANGER, OTHER)}
    texted(sealed, [old[KNOWN], old[STRANGER], old[STRANGER], old[OTHER]])

    privacy.add_next_key(sealed.key_file)
    privacy.promote_next_key(sealed.key_file)
    ring = load_or_create_key(sealed.key_file)
    index = BlindIndex(ring)
    report = privacy.reseal(sealed.db, ring)
    got = log(sealed)
    assert got[0] == index.hash(KNOWN)  # a bound number follows the number, as before
    tag = f"~{key_id(ring.primary)}~"
    assert got[1] == got[2] == privacy.rewrap_unbound(index, old[STRANGER])
    assert got[1].startswith(tag) and len(got[1]) == 64 and got[3] != got[1]  # one sender, one value
    assert report.inbound_rehashed == 4 and report.inbound_rewrapped == 3
    # the leaked old key: neither its hash of a number nor the new key's without the old one matches
    leaked = set(old.values())
    assert leaked & set(got) == set()
    assert {BlindIndex(first).hash(p) for p in (STRANGER, OTHER)} & set(got) == set()

    # again: nothing to do; a stranger texting after the rotation (hashed under the new key) is wrapped
    texted(sealed, [index.hash(STRANGER)])
    again = privacy.reseal(sealed.db, ring)
    assert again.inbound_rewrapped == 1 and log(sealed)[:4] == got
    assert log(sealed)[4] == privacy.rewrap_unbound(index, index.hash(STRANGER))

    # the next rotation re-wraps what the previous key wrapped, once
    privacy.retire_old_keys(sealed.db, sealed.key_file)
    privacy.add_next_key(sealed.key_file)
    privacy.promote_next_key(sealed.key_file)
    ring2 = load_or_create_key(sealed.key_file)
    third = privacy.reseal(sealed.db, ring2)
    final = log(sealed)
    assert third.inbound_rewrapped == 4
    assert final[1] == final[2] == privacy.rewrap_unbound(BlindIndex(ring2), got[1])
    assert all(h.startswith(f"~{key_id(ring2.primary)}~") for h in final[1:])
    assert final[0] == BlindIndex(ring2).hash(KNOWN)
    assert privacy.reseal(sealed.db, ring2).inbound_rewrapped == 0
