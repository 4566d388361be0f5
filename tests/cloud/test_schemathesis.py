"""Property-based API fuzzing with schemathesis, once per role and once with no credentials.

Every operation of the OpenAPI spec is driven with the token of each role (admin, dispatcher, operator,
viewer, gateway) and with none. For every generated request:

- no 5xx (``not_a_server_error``);
- the response conforms to the spec: a documented status code, a documented content type and a body that
  validates against the declared schema (schemathesis' ``status_code_conformance``,
  ``content_type_conformance``, ``response_schema_conformance``);
- a role the operation does not admit (see ``ACCESS``) gets 401 / 403, never a 2xx: anonymous callers get
  401 on every protected operation.

``ACCESS`` must name every operation of the spec, so a new endpoint has to say who may call it.

CI runs a few derandomized examples per operation and role (well under a minute); the long mode
``VIGIL_SCHEMATHESIS_EXAMPLES=200 pytest -s tests/cloud/test_schemathesis.py`` tries many more. Both print
``schemathesis: N operations x M roles, K cases, F 5xx``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloud.app import create_app
from tests.cloud.cloudkit import CSV_HEADER, CSV_ROWS, GW1, T0, make_settings

ROLES = ("admin", "dispatcher", "operator", "viewer", "gateway", "none")
PUBLIC = frozenset(ROLES)  # no credentials needed (the link, the signature or the callback is the key)
ANY_TOKEN = frozenset(ROLES) - {"none"}
USERS = frozenset({"admin", "dispatcher", "operator", "viewer"})
STAFF = frozenset({"admin", "dispatcher", "operator"})
DESK = frozenset({"admin", "dispatcher"})
ADMIN = frozenset({"admin"})
GATEWAY = frozenset({"gateway"})

#: who may call what (cloud/api/deps.py User/Admin/GatewayCaller, incidents Staff/Desk, in-body require())
ACCESS: dict[str, frozenset[str]] = {
    "GET /healthz": PUBLIC,
    "GET /metrics": PUBLIC,
    "POST /api/v1/ingest/batches": GATEWAY,
    "GET /api/v1/devices": USERS,
    "POST /api/v1/devices": ADMIN,
    "POST /api/v1/devices/import": ADMIN,
    "GET /api/v1/devices/{device_id}": USERS,
    "DELETE /api/v1/devices/{device_id}": ADMIN,
    "GET /api/v1/devices/{device_id}/readings": USERS,
    "GET /api/v1/gateways": USERS,
    "POST /api/v1/gateways": ADMIN,
    "GET /api/v1/gateways/{gateway_id}": USERS,
    "POST /api/v1/gateways/{gateway_id}/rotate": ADMIN,
    "POST /api/v1/gateways/{gateway_id}/revoke": ADMIN,
    "GET /api/v1/alerts": USERS,
    "GET /api/v1/alerts/{alert_id}": USERS,
    "POST /api/v1/auth/login": PUBLIC,
    "POST /api/v1/auth/logout": USERS,
    "GET /api/v1/auth/whoami": ANY_TOKEN,
    "POST /api/v1/push/ctwing": PUBLIC,
    "GET /api/v1/push/onenet": PUBLIC,
    "POST /api/v1/push/onenet": PUBLIC,
    "GET /api/v1/notify/status": USERS,
    "GET /api/v1/notify/inapp": USERS,
    "POST /api/v1/notify/inapp/{item_id}/read": USERS,
    "GET /api/v1/notify/incidents/{incident_id}/log": USERS,
    "GET /api/v1/notify/incidents/{incident_id}/family": STAFF,
    "POST /api/v1/notify/send": STAFF,
    "POST /api/v1/notify/incidents/{incident_id}/case-link": STAFF,
    "PUT /api/v1/notify/contacts/{username}": ADMIN,
    "GET /api/v1/notify/contacts/{username}": USERS,
    "PUT /api/v1/notify/groups/{name}": ADMIN,
    "GET /api/v1/notify/reports": USERS,
    "GET /api/v1/notify/ratings": USERS,
    "GET /api/v1/notify/photos/{photo_id}": USERS,
    "POST /api/v1/notify/sms/inbound/{provider}": PUBLIC,
    "GET /api/v1/links/{token}": PUBLIC,
    "GET /api/v1/links/{token}/position": PUBLIC,
    "POST /api/v1/links/{token}": PUBLIC,
    "POST /api/v1/links/{token}/rating": PUBLIC,
    "POST /api/v1/links/{token}/reopen": PUBLIC,
    "POST /api/v1/reports": PUBLIC,
    "POST /api/v1/internal/certificate-refusals": PUBLIC,  # the proxy secret is the key (docs/mtls.md)
    "GET /api/v1/risk/forecast": USERS,
    "GET /api/v1/risk/patrol": USERS,
    "GET /api/v1/risk/health-trends": DESK,
    "GET /api/v1/console/devices": USERS,
    "GET /api/v1/incidents": USERS,
    "GET /api/v1/incidents/{incident_id}": USERS,
    "POST /api/v1/incidents/{incident_id}/actions": STAFF,
    "POST /api/v1/incidents/{incident_id}/confirm": DESK,
    "POST /api/v1/incidents/{incident_id}/rule-out": DESK,
    "GET /api/v1/incidents/{incident_id}/family-call": STAFF,
    # an operator only on the desk or holding the task
    "POST /api/v1/incidents/{incident_id}/family-call": STAFF,
    "POST /api/v1/incidents/{incident_id}/photos": STAFF,
    "GET /api/v1/incidents/{incident_id}/photos/{photo_id}": USERS,
    "GET /api/v1/incidents/{incident_id}/intents": DESK,
    "POST /api/v1/loop/reports": STAFF,
    "GET /api/v1/loop/config/{name}": USERS,
    "PUT /api/v1/loop/config/{name}": ADMIN,
    "POST /api/v1/loop/overrides": DESK,
    "GET /api/v1/loop/oncall": USERS,
    "GET /api/v1/loop/coverage": USERS,
    "GET /api/v1/loop/silences": USERS,
    "POST /api/v1/loop/silences": DESK,
    "DELETE /api/v1/loop/silences/{silence_id}": DESK,
    "GET /api/v1/loop/audit": ADMIN,
    "GET /api/v1/kpi": USERS,
}

LONG = int(os.environ.get("VIGIL_SCHEMATHESIS_EXAMPLES", "0"))
#: examples per (operation, role): a role the operation admits gets more than one it refuses
ALLOWED_EXAMPLES = LONG or 6
DENIED_EXAMPLES = max(2, LONG // 5) if LONG else 2
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.server_errors = 0
        self.status: Counter[tuple[str, int]] = Counter()


@pytest.fixture
def fuzz_app(tmp_path: Path) -> Iterator[tuple[schemathesis.schemas.BaseSchema, dict[str, str]]]:
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path}/vigil.db"))
    st = app.state.vigil
    tokens = {role: st.credentials.add_user(f"fuzz-{role}", role, now=T0) for role in sorted(USERS)}
    tokens["gateway"] = st.credentials.add_gateway(GW1, now=T0)
    st.registry.import_csv("\n".join([CSV_HEADER, *CSV_ROWS]) + "\n", now=T0)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app), tokens
    finally:
        st.close()


def _denied(role: str) -> Callable[..., None]:
    def refused(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> None:
        want = (401,) if role == "none" else (401, 403)
        assert response.status_code in want, (
            f"{case.operation.label} as {role}: expected {want}, got {response.status_code} "
            f"{response.text[:200]!r}"
        )

    return refused


def _property(op: Any, role: str, token: str | None, allowed: bool, tally: Tally) -> Callable[[], None]:
    """One Hypothesis property per (operation, role)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    checks = CONFORMANCE if allowed else [*CONFORMANCE, _denied(role)]

    @given(case=op.as_strategy())
    @settings(
        max_examples=ALLOWED_EXAMPLES if allowed else DENIED_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case[Any]) -> None:
        tally.cases += 1
        try:
            response = case.call(headers=headers)
        except Exception:  # the in-process transport raises what a server would answer with a 500
            tally.server_errors += 1
            raise
        tally.status[(role, response.status_code)] += 1
        if response.status_code >= 500:
            tally.server_errors += 1
        case.validate_response(response, checks=checks, headers=headers)

    return run


def _label(op: Any) -> str:
    return f"{op.method.upper()} {op.path}"


@pytest.mark.timeout(0 if LONG else 300)  # the long mode takes as long as it takes
def test_every_operation_every_role(
    fuzz_app: tuple[schemathesis.schemas.BaseSchema, dict[str, str]],
) -> None:
    # schemathesis' own pytest integration (``from_fixture``) does not work with this pytest version, so
    # the operations are driven directly with Hypothesis: one property per operation and role.
    api_schema, tokens = fuzz_app
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    labels = {_label(op) for op in operations}
    assert labels == set(ACCESS), (
        f"ACCESS out of date: missing {sorted(labels - set(ACCESS))}, stale {sorted(set(ACCESS) - labels)}"
    )
    # logout revokes the token it is called with: every role's logout runs after everything else
    operations.sort(key=lambda op: _label(op) == "POST /api/v1/auth/logout")
    tally = Tally()
    failures: list[str] = []
    for op in operations:
        for role in ROLES:
            allowed = role in ACCESS[_label(op)]
            try:
                _property(op, role, tokens.get(role), allowed, tally)()
            except (Exception, BaseExceptionGroup) as exc:  # collect every failure, then fail once with all
                failures.append(f"{_label(op)} as {role}: {exc}")
    print(
        f"\nschemathesis: {len(operations)} operations x {len(ROLES)} roles, {tally.cases} cases, "
        f"{tally.server_errors} 5xx"
    )
    assert not failures, f"{len(failures)} failing (operation, role) pairs:\n\n" + "\n\n".join(failures)
    assert tally.server_errors == 0
    # the properties really exercised the app, and every role got both answers and refusals
    assert tally.cases >= len(operations) * len(ROLES) * DENIED_EXAMPLES
    for role in ("admin", "viewer", "gateway"):
        assert any(r == role and 200 <= code < 300 for r, code in tally.status), role
    for role in ("viewer", "none"):
        assert any(r == role and code in (401, 403) for r, code in tally.status), role


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("DELETE", f"/api/v1/loop/silences/{2**63}"),  # overflowed SQLite's INTEGER: a 500
        ("GET", "/api/v1/risk/forecast?at=1e77"),  # an astronomically long season table: a 500
        ("GET", "/api/v1/risk/patrol?worker=w1&shift_start=1e77"),
    ],
)
async def test_what_the_long_fuzz_found_stays_a_4xx_naming_the_field(
    fuzz_app: tuple[schemathesis.schemas.BaseSchema, dict[str, str]], method: str, url: str
) -> None:
    api_schema, tokens = fuzz_app
    app = api_schema.app
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as client:
        r = await client.request(method, url, headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"][-1] in ("silence_id", "at", "shift_start")
