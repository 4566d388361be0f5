"""Message links follow the key file's rotation (cloud/notify/links.py, docs/privacy.md "Key management").

The key file goes through the real ``vigil cloud key add | rotate | retire`` (on a migrated SQLite
database); after each step a signer is built from the file as the notify service builds it
(``LinkSigner(derive_link_key(load_or_create_key(path)))``, i.e. a restarted cloud). Links are signed with
the current primary and verified with every key of the ring: a link sent before ``rotate`` works until it
expires, ``retire`` voids it. Links issued before key ids existed (no ``k`` claim, signed with the first
key: the format of cloud/notify/links.py up to commit 1ed11f7, rebuilt here byte for byte) keep working
while that key is in the ring.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

import vigil_cli
from cloud.crypto import KeyRing, key_id, load_or_create_key
from cloud.db import upgrade_head
from cloud.notify.links import LinkError, LinkKeys, LinkSigner, Purpose, derive_link_key, link_key_id

T0 = 1_800_000_000.0
TTL = 3600.0


def signer(path: Path) -> LinkSigner:
    """What a (re)started cloud signs and verifies with (cloud/notify/service.py)."""
    return LinkSigner(derive_link_key(load_or_create_key(path)), base_url="https://v.example", ttl_s=TTL)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def legacy_token(root: bytes, incident: str, *, now: float) -> str:
    """A link as issued before key ids: claims without ``k``, ``HMAC(HMAC(root, "vigil/links/v1"), body)``."""
    claims = {"p": "accept", "i": incident, "a": "user:7", "e": round(now + TTL, 3), "n": "0011223344556677",
              "t": round(now, 3)}  # fmt: skip
    body = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
    link_key = hmac.new(root, b"vigil/links/v1", hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(hmac.new(link_key, body, hashlib.sha256).digest())}"


def claims_of(token: str) -> dict[str, object]:
    body = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def key_cli(capsys: pytest.CaptureFixture[str], url: str, path: Path, *argv: str) -> None:
    code = vigil_cli.main(["cloud", "key", *argv, "--database-url", url, "--secret-key-file", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err


def forged(s: LinkSigner, token: str, now: float) -> str:
    with pytest.raises(LinkError) as exc:
        s.verify(token, now=now)
    assert exc.value.code == "link_forged"
    return str(exc.value)


def test_links_are_signed_with_the_current_key_and_verified_with_the_ring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    upgrade_head(url)
    path = tmp_path / "keys" / "vigil-secret.key"
    first = load_or_create_key(path)
    s0 = signer(path)
    before = s0.token(Purpose.ACCEPT, "I-1", "user:7", now=T0)
    legacy = legacy_token(first.primary, "I-0", now=T0)
    assert claims_of(before)["k"] == link_key_id(derive_link_key(first.primary))
    assert "k" not in claims_of(legacy)
    # an unrotated file: the first key signs, as before key ids; both kinds verify
    assert derive_link_key(first) == derive_link_key(first.primary)
    assert s0.verify(before, now=T0 + 1).incident_id == "I-1"
    assert s0.verify(legacy, now=T0 + 1).incident_id == "I-0"

    # add: a next key verifies (a host that rotated first signs with it) but does not sign yet
    key_cli(capsys, url, path, "add")
    s1 = signer(path)
    ring = load_or_create_key(path)
    nxt = next(e.key for e in ring.entries if e.role == "next")
    early = LinkSigner(derive_link_key(nxt), base_url="https://v.example", ttl_s=TTL)
    assert s1.verify(early.token(Purpose.ARRIVED, "I-2", "user:7", now=T0), now=T0 + 1).incident_id == "I-2"
    assert claims_of(s1.token(Purpose.ACCEPT, "I-3", "user:7", now=T0))["k"] == claims_of(before)["k"]

    # rotate: the new primary signs; links sent before still work until they expire
    key_cli(capsys, url, path, "rotate")
    s2 = signer(path)
    ring = load_or_create_key(path)
    assert key_id(ring.primary) == key_id(nxt)
    after = s2.token(Purpose.ACCEPT, "I-4", "user:7", now=T0 + 10)
    assert claims_of(after)["k"] == link_key_id(derive_link_key(nxt)) != claims_of(before)["k"]
    for token in (before, legacy, after):
        assert s2.verify(token, now=T0 + 20).purpose is Purpose.ACCEPT
    with pytest.raises(LinkError) as exc:  # expiry still holds under every key
        s2.verify(before, now=T0 + TTL)
    assert exc.value.code == "link_expired"

    # retire: the old key's links (with and without key id) are void; the current key's still work
    key_cli(capsys, url, path, "retire", "--void-links")  # at once: voiding them is what is tested
    s3 = signer(path)
    assert s3.verify(after, now=T0 + 30).incident_id == "I-4"
    assert "retired" in forged(s3, before, T0 + 30)
    assert "signature mismatch" in forged(s3, legacy, T0 + 30)
    # the blind index rotates with the key too (tests/cloud/test_key_rotation.py): no hmac line is left
    assert [e.role for e in load_or_create_key(path).entries] == ["primary"]


def test_a_key_id_cannot_be_swapped_or_invented() -> None:
    k1, k2 = b"1" * 32, b"2" * 32
    both = LinkSigner(LinkKeys(k2, (k1,)), base_url="https://v.example", ttl_s=TTL)
    only_1 = LinkSigner(k1, base_url="https://v.example", ttl_s=TTL)
    token = only_1.token(Purpose.ACCEPT, "I-1", "user:7", now=T0)
    assert both.verify(token, now=T0).incident_id == "I-1"
    claims = claims_of(token)
    mac = token.split(".")[1]
    for kid in (link_key_id(k2), "deadbeef", 7):  # re-labelled under another key id: the MAC no longer fits
        body = json.dumps({**claims, "k": kid}, separators=(",", ":")).encode()
        forged(both, f"{_b64(body)}.{mac}", T0)
    # a body that is not a JSON object is tried against every key, and fails
    forged(both, f"{_b64(b'[' * 700)}.{mac}", T0)
    not_utf8 = _b64(bytes([0xFF, 0xFE]))
    forged(both, f"{not_utf8}.{mac}", T0)
    assert "k2" not in repr(LinkKeys(k2)) and "2222" not in repr(LinkKeys(k2))


def test_derive_link_key_of_a_ring_lists_every_opening_key(tmp_path: Path) -> None:
    ring = load_or_create_key(tmp_path / "k")
    assert isinstance(ring, KeyRing)
    keys = derive_link_key(ring)
    assert isinstance(keys, LinkKeys) and list(keys.verifiers) == [keys.kid]
