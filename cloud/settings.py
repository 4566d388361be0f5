"""Typed, validated settings of the cloud service.

Embedded defaults let one box run a community with nothing else installed: SQLite for operational data
(``./var/vigil.db``) and SQLite for telemetry (``./var/vigil-ts.db``). Production points
``database_url`` at PostgreSQL and ``timeseries_url`` at InfluxDB or VictoriaMetrics.

Every field can come from the environment as ``VIGIL_CLOUD_<FIELD>`` (e.g. ``VIGIL_CLOUD_DATABASE_URL``);
command-line flags override the environment (see :func:`CloudSettings.from_env`). ``pydantic-settings``
is not a dependency: the mapping is a dozen lines here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cloud.errors import ConfigError

ENV_PREFIX = "VIGIL_CLOUD_"


class CloudSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = "sqlite:///./var/vigil.db"
    timeseries_url: str = "sqlite:///./var/vigil-ts.db"
    secret_key_file: Path = Path("./var/vigil-secret.key")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: run ``alembic upgrade head`` at startup; ``None`` = only on the embedded SQLite default
    migrate_on_start: bool | None = None
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: after ``vigil cloud gateway rotate`` the previous token stays valid this long (0 = immediately invalid)
    gateway_rotation_grace_s: float = Field(default=3600.0, ge=0)
    #: a device is silent after ``silent_factor`` x its profile interval without a reading
    silent_factor: float = Field(default=2.5, gt=1)
    #: a gateway is offline after this long without a batch
    gateway_offline_s: float = Field(default=300.0, gt=0)
    #: open connectivity alerts are repeated (an ``updated`` step) at this interval
    reminder_interval_s: float = Field(default=3600.0, gt=0)
    #: how often the connectivity monitor runs; 0 disables the background task (tests drive it by hand)
    connectivity_check_s: float = Field(default=30.0, ge=0)
    #: token configured on the CTWing platform's push subscription (sent as ``?token=``)
    ctwing_token: str = ""
    #: token configured on the OneNET platform's HTTP push (signature = Base64(MD5(token + nonce + msg)))
    onenet_token: str = ""
    #: JSON lines on stderr (production) instead of the plain text format
    json_logs: bool = True
    #: TOML file configuring notification channels (docs/notifications.md); unset = in-app only
    notify_config_file: Path | None = None
    #: take part in the periodic jobs (connectivity, escalation, notification retries) in this process;
    #: each job runs in exactly one process at a time under a lease (``cloud/jobs.py``)
    run_jobs: bool = True
    #: embedded SQLite only: build each batch's database transaction in a second thread while its readings
    #: are written, commit after they are durable. Off by default: measured a loss of 5-15 % readings per
    #: CPU-second on a quiet 2-core box, a wall-time win only on a heavily loaded one
    #: (docs/deploy-district.md, "Whole path / store on the embedded default")
    ingest_overlap: bool = False
    #: lease time-to-live of a periodic job: a dead holder is replaced within about this long
    job_lease_ttl_s: float = Field(default=15.0, gt=0)
    #: run only these periodic jobs in this process (comma-separated names; empty = all registered)
    jobs_only: str = ""
    #: cloud-side detection for devices assigned to these gateway ids (comma-separated, e.g. the operator
    #: platforms ``ctwing,onenet``); empty = off. Their readings are queued for the ``detect`` job.
    detect_gateways: str = ""
    #: readings per detection pass (one fenced transaction)
    detect_batch_max: int = Field(default=50_000, ge=1)
    #: how often the ``detect`` job drains the queue (clock seconds)
    detect_interval_s: float = Field(default=1.0, gt=0)
    #: MQTT ingest workers (``vigil cloud mqtt-ingest``): the broker, and this worker's stable client id
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_client_id: str = "vigil-ingest"
    mqtt_group: str = "vigil-ingest"
    mqtt_username: str = ""
    mqtt_password: str = ""
    #: HTTPS served by the cloud itself (cloud/tls.py): PEM certificate chain and its private key; unset =
    #: plain HTTP (behind a reverse proxy that terminates TLS, deploy/nginx-vigil.conf)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: require client certificates signed by this CA (mutual TLS for gateways); needs ``tls_cert``
    tls_client_ca: Path | None = None
    #: certificate revocation list(s) of that CA (PEM, one or more CRLs; docs/mtls.md): a revoked client
    #: certificate is refused (403 ``certificate_revoked``); re-read when the file changes, no restart.
    #: Needs ``tls_client_ca``. Behind nginx use ``ssl_crl`` (deploy/nginx/vigil-cloud.conf) instead.
    tls_crl: Path | None = None
    #: the ``retention`` job (cloud/retention.py, docs/privacy.md "Retention"): how often it runs (0 = off)
    retention_interval_s: float = Field(default=3600.0, ge=0)
    #: rows per delete / update transaction, and at most this many batches per rule per run
    retention_batch: int = Field(default=5000, ge=1)
    retention_max_batches: int = Field(default=20, ge=1)
    #: days a wristband's raw readings (heart rate, SpO2, position) stay in the time-series store (0 = keep)
    retention_wristband_readings_days: float = Field(default=180.0, ge=0)
    #: days after an incident closes that its resident reporter's sealed contact is kept (0 = keep)
    retention_incident_personal_days: float = Field(default=365.0, ge=0)
    #: days a wristband's cleared alert keeps its value and message (e.g. heart rate 35) (0 = keep)
    retention_wristband_alert_values_days: float = Field(default=365.0, ge=0)
    #: days audit rows (logins with client address, administrative actions) are kept (0 = keep; >= 180)
    retention_audit_days: float = Field(default=730.0, ge=0)
    #: days a batch id is kept for idempotency (0 = keep): above the gateway's outbox.alert_max_age_s (90)
    retention_batch_ids_days: float = Field(default=100.0, ge=0)
    #: days a batch id that stored nothing (a heartbeat, a batch refused whole) is kept (0 = as above)
    retention_empty_batch_ids_days: float = Field(default=2.0, ge=0)

    @model_validator(mode="after")
    def _audit_kept_six_months(self) -> CloudSettings:
        # network logs are kept at least six months (Cybersecurity Law of the PRC, art. 21)
        if 0 < self.retention_audit_days < 180:
            raise ValueError("retention_audit_days must be 0 (keep) or at least 180 (six months of logs)")
        return self

    @model_validator(mode="after")
    def _tls_complete(self) -> CloudSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set tls_cert and tls_key together (the certificate chain and its private key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (client certificates need HTTPS)")
        if self.tls_crl is not None and self.tls_client_ca is None:
            raise ValueError(
                "tls_crl needs tls_client_ca (VIGIL_CLOUD_TLS_CLIENT_CA): a CRL revokes client certificates"
            )
        return self

    @property
    def is_embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def jobs_selected(self) -> list[str] | None:
        names = [n.strip() for n in self.jobs_only.split(",") if n.strip()]
        return names or None

    @property
    def detect_gateway_ids(self) -> list[str]:
        return [g.strip() for g in self.detect_gateways.split(",") if g.strip()]

    @property
    def should_migrate(self) -> bool:
        return self.is_embedded if self.migrate_on_start is None else self.migrate_on_start

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> CloudSettings:
        """Settings from ``VIGIL_CLOUD_*`` variables, then ``overrides`` (``None`` values are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            if not field:  # a check across fields (model_validator): its message names them
                raise ConfigError(f"invalid cloud settings: {first['msg']}") from exc
            raise ConfigError(
                f"invalid cloud setting {field!r} ({ENV_PREFIX}{field.upper()}): {first['msg']}"
            ) from exc
