"""Signature schemes against test vectors published by others (each cites its source)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from cloud.notify import aliyun, dingtalk, tencent, webhook
from cloud.notify.links import LinkError, LinkSigner, Purpose, derive_link_key


def test_dingtalk_sign_matches_a_published_vector() -> None:
    # Source: the Rust crate `dingding` 0.1.1, src/signature.rs, test `creates_expected_signature`
    # (docs.rs/crate/dingding/latest/source/src/signature.rs), an independent implementation of
    # open.dingtalk.com "custom robot access / 加签".
    assert dingtalk.sign(1700000000000, "secret") == "OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"


# Source: Aliyun "RPC signature mechanism" (help.aliyun.com, signature v1 worked example): DescribeRegions,
# AccessKeyId "testid", secret "testsecret" -> the string to sign and the signature below (GET variant).
ALIYUN_DOC_PARAMS = {
    "AccessKeyId": "testid",
    "Action": "DescribeRegions",
    "Format": "XML",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    "SignatureVersion": "1.0",
    "Timestamp": "2016-02-23T12:46:24Z",
    "Version": "2014-05-26",
}


def test_aliyun_string_to_sign_matches_the_documented_example() -> None:
    assert aliyun.string_to_sign("GET", ALIYUN_DOC_PARAMS) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
        "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"
        "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
    )


def test_aliyun_signature_matches_the_documented_example() -> None:
    assert aliyun.sign_rpc("GET", ALIYUN_DOC_PARAMS, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_aliyun_percent_encoding_rules() -> None:
    # Aliyun's rules: RFC 3986 unreserved kept, space -> %20, '*' -> %2A, '~' kept; UTF-8 for Chinese
    assert aliyun.percent_encode("a b*c~d") == "a%20b%2Ac~d"
    assert aliyun.percent_encode("阿里") == "%E9%98%BF%E9%87%8C"


def test_tencent_tc3_matches_the_documented_example() -> None:
    # Source: Tencent Cloud API 3.0 "Signature v3" documentation (cloud.tencent.com/document/api/213/30654,
    # the CVM DescribeInstances example): SecretKey Gu5t9xGARNpq86cd98joQYCN3EXAMPLE, timestamp 1551113065,
    # SignedHeaders content-type;host -> Signature 72e494ea....
    payload = '{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    assert hashlib.sha256(payload.encode()).hexdigest() == (
        "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    )
    sig = tencent.tc3_signature(
        secret_key="Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        service="cvm",
        host="cvm.tencentcloudapi.com",
        timestamp=1551113065,
        payload=payload,
    )
    assert sig == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    auth = tencent.authorization(
        secret_id="AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
        secret_key="Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        service="cvm",
        host="cvm.tencentcloudapi.com",
        timestamp=1551113065,
        payload=payload,
    )
    assert auth.startswith(
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, "
        "SignedHeaders=content-type;host, Signature=72e494ea"
    )


def test_webhook_signature_round_trip_and_replay_window() -> None:
    body = json.dumps({"a": 1}).encode()
    sig = webhook.signature("k", 1_790_000_000, body)
    # HMAC-SHA256 over "{ts}.{body}", spelled out so a receiver in any language can check it
    assert sig == "sha256=" + hmac.new(b"k", b'1790000000.{"a": 1}', hashlib.sha256).hexdigest()
    headers = {webhook.TIMESTAMP_HEADER: "1790000000", webhook.SIGNATURE_HEADER: sig}
    assert webhook.verify("k", headers, body, now=1_790_000_100) == ""
    assert webhook.verify("k", headers, body, now=1_790_000_400) == "stale timestamp"
    assert webhook.verify("k", headers, body + b" ", now=1_790_000_000) == "bad signature"
    assert webhook.verify("other", headers, body, now=1_790_000_000) == "bad signature"


def test_link_tokens_refuse_forgery_expiry_and_garbage() -> None:
    signer = LinkSigner(derive_link_key(b"k" * 44), base_url="https://v.example/", ttl_s=60)
    token = signer.token(Purpose.ACCEPT, "42", "user:7", now=1000.0)
    claims = signer.verify(token, now=1030.0)
    assert (claims.purpose, claims.incident_id, claims.actor) == (Purpose.ACCEPT, "42", "user:7")
    assert signer.url(token) == f"https://v.example/l/{token}"
    with pytest.raises(LinkError) as exc:
        signer.verify(token, now=1060.0)
    assert exc.value.code == "link_expired"
    other = LinkSigner(derive_link_key(b"x" * 44), base_url="https://v.example", ttl_s=60)
    with pytest.raises(LinkError) as exc:
        other.verify(token, now=1001.0)
    assert exc.value.code == "link_forged"
    body, _, mac = token.partition(".")
    tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    with pytest.raises(LinkError) as exc:
        signer.verify(tampered, now=1001.0)
    assert exc.value.code in ("link_forged", "link_malformed")
    for garbage in ("", "abc", "a.b.c", "%%%.%%%"):
        with pytest.raises(LinkError):
            signer.verify(garbage, now=1001.0)
