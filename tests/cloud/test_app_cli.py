"""`vigil cloud ...` one-shot commands, run in-process against a temporary SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest

import vigil_cli
from cloud.auth import Credentials
from cloud.db import Database
from tests.cloud.cloudkit import CSV_HEADER, CSV_ROWS, GW1, MANHOLE_1, T0


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = vigil_cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_provisioning_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path}/v.db"
    common = ["--database-url", db, "--secret-key-file", str(tmp_path / "k.key")]
    assert _run(capsys, "cloud", "migrate", "--database-url", db)[0] == 0
    code, out, _ = _run(capsys, "cloud", "gateway", "add", GW1, *common)
    token = out.strip()
    assert code == 0 and token.startswith("vgw_")
    code, out, err = _run(capsys, "cloud", "gateway", "rotate", GW1, *common)
    new_token = out.strip()
    assert code == 0 and new_token != token and "valid for" in err
    csv = tmp_path / "devices.csv"
    csv.write_text("\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", encoding="utf-8")
    code, out, _ = _run(capsys, "cloud", "import-devices", str(csv), *common)
    assert code == 0 and "imported 4" in out
    code, out, _ = _run(capsys, "cloud", "user", "add", "alice", "--role", "dispatcher", *common)
    assert code == 0 and out.strip().startswith("vus_")
    database = Database(db)
    try:
        creds = Credentials(database, rotation_grace_s=3600)
        assert creds.gateway_for_token(new_token, now=T0 * 2) == GW1
        assert creds.user_for_token(out.strip(), now=T0 * 2).role.value == "dispatcher"
    finally:
        database.close()
    code, out, _ = _run(capsys, "cloud", "gateway", "revoke", GW1, *common)
    assert code == 0 and "revoked" in out


def test_cli_bad_csv_reports_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(CSV_HEADER + "\n" + f"{MANHOLE_1},manhole\nzz,manhole\n", encoding="utf-8")
    code, _, err = _run(
        capsys,
        "cloud",
        "import-devices",
        str(csv),
        "--database-url",
        f"sqlite:///{tmp_path}/v.db",
        "--secret-key-file",
        str(tmp_path / "k.key"),
    )
    assert code == 1 and "line 3" in err and "line 2" not in err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--database-url", f"sqlite:///{tmp_path}/v.db", "--secret-key-file", str(tmp_path / "k.key")]
    code, _, err = _run(capsys, "cloud", "gateway", "rotate", "nope", *common)
    assert code == 1 and err.strip() == "error: no gateway 'nope'"


def test_cli_disables_a_user_at_once_and_audits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11: users can be disabled. Disabling refuses login and revokes every token immediately."""
    from sqlalchemy import select

    from cloud.errors import AuthenticationError, NotFoundError
    from cloud.loop.models import AuditEntry

    db = f"sqlite:///{tmp_path}/v.db"
    common = ["--database-url", db, "--secret-key-file", str(tmp_path / "k.key")]
    code, out, _ = _run(capsys, "cloud", "user", "add", "bob", "--role", "operator", *common)
    api_token = out.strip()
    database = Database(db)
    try:
        creds = Credentials(database, rotation_grace_s=3600)
        creds.set_disabled("bob", False, actor="test", now=T0)  # enabling an active user changes nothing
        assert creds.user_for_token(api_token, now=T0).name == "bob"
        code, out, _ = _run(capsys, "cloud", "user", "disable", "bob", *common)
        assert code == 0 and "已停用" in out and "1 token(s) revoked" in out
        with pytest.raises(AuthenticationError):
            creds.user_for_token(api_token, now=T0)  # the session ended at once
        code, out, _ = _run(capsys, "cloud", "user", "list", *common)
        assert code == 0 and "bob\toperator\t已停用 disabled\ttokens=0" in out
        code, _, err = _run(capsys, "cloud", "user", "disable", "nobody", *common)
        assert code == 1 and "nobody" in err
        assert _run(capsys, "cloud", "user", "enable", "bob", *common)[0] == 0
        with database.read() as s:
            actions = [(a.action, a.target) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        assert [a for a in actions if a[0].startswith("user.")] == [
            ("user.enable", "user:bob"), ("user.disable", "user:bob"), ("user.enable", "user:bob")
        ]  # fmt: skip
        with pytest.raises(NotFoundError):
            creds.set_disabled("ghost", True, actor="test", now=T0)
    finally:
        database.close()
