"""The Grafana files load, refer only to provisioned datasources, and query only names Vigil writes.

Measurements and fields are checked against the kind registry (``vigil_<kind>``, one field per channel,
``docs/timeseries.md``); ``vigil_cloud_*`` metrics against the cloud's own Prometheus registry. No panel may
show a wristband's health channels (Grafana does not know Vigil's roles).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.metrics import CloudMetrics
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import spec

GRAFANA = Path(__file__).resolve().parents[2] / "dashboards" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
META_FIELDS = {"seq", "battery_pct", "flags", "fw_version"}
HEALTH = {"heart_rate_bpm", "spo2_pct", "lat", "lon"}


def _datasources() -> dict[str, str]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "vigil.yaml").read_text("utf-8"))
    assert doc["apiVersion"] == 1
    return {d["uid"]: d["type"] for d in doc["datasources"]}


def _fields(kind: str) -> set[str]:
    return {c.name for c in spec(DeviceKind(kind)).channels} | META_FIELDS


def _cloud_metric_names() -> set[str]:
    names: set[str] = set()
    for metric in CloudMetrics().registry.collect():
        names.add(metric.name)
        if metric.type == "counter":  # a labelled counter has no samples until its first label set
            names.add(metric.name + "_total")
        names.update(s.name for s in metric.samples)
    return names


def test_provisioning_files_load() -> None:
    assert set(_datasources()) == {"vigil-victoria", "vigil-influx"}
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vigil.yaml").read_text("utf-8"))
    assert doc["providers"][0]["type"] == "file" and doc["providers"][0]["options"]["path"]


def test_there_is_a_dashboard_per_backend() -> None:
    uids = {json.loads(p.read_text("utf-8"))["uid"] for p in DASHBOARDS}
    assert uids == {"vigil-victoria", "vigil-influx"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_and_queries_known_names(path: Path) -> None:
    dash: dict[str, Any] = json.loads(path.read_text("utf-8"))
    sources = _datasources()
    cloud_metrics = _cloud_metric_names()
    assert dash["title"] and dash["schemaVersion"] >= 30 and dash["timezone"] == "Asia/Shanghai"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 8
    titles = " ".join(p["title"] for p in dash["panels"])
    for topic in ("readings", "Alert", "gateway"):
        assert topic.lower() in titles.lower(), f"no panel about {topic}"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        assert p["targets"], p["title"]
        for t in p["targets"]:
            ds = t["datasource"]
            assert sources.get(ds["uid"]) == ds["type"], f"{p['title']}: unknown datasource {ds}"
            text = t.get("expr") or t.get("query") or ""
            assert text, p["title"]
            for kind, field in re.findall(r"vigil_(manhole|smoke_alarm|wristband)_([a-z0-9_]+)", text):
                assert field in _fields(kind), f"{p['title']}: vigil_{kind} has no field {field}"
            for measurement in re.findall(r'FROM "([^"]+)"', text):
                kind = measurement.removeprefix("vigil_")
                assert kind in {k.value for k in DeviceKind}, measurement
                for field in re.findall(r'(?:mean|count|last|min|max)\("([^"]+)"\)', text):
                    assert field in _fields(kind), f"{p['title']}: {measurement} has no field {field}"
            for metric in re.findall(r"vigil_cloud_[a-z_]+", text):
                assert metric in cloud_metrics, f"{p['title']}: the cloud exports no {metric}"
            assert not any(h in text for h in HEALTH), f"{p['title']} shows wristband health data"
