"""The test servers really are what they claim to be (a fixture that silently did nothing would let
every test that depends on it pass vacuously)."""

from __future__ import annotations

import json
import time
import urllib.request

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from tests.servers import MosquittoServer, PostgresServer, VictoriaServer


def test_mosquitto_round_trips_a_message(mosquitto: MosquittoServer) -> None:
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="infra-test")
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect(mosquitto.host, mosquitto.port)
    client.subscribe("infra/test", qos=1)
    client.loop_start()
    try:
        time.sleep(0.2)
        client.publish("infra/test", b"hello", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got == [b"hello"]


def test_postgres_gives_each_test_a_fresh_database(pg_server: PostgresServer, pg_url: str) -> None:
    db = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_server.dsn(db)) as conn:
        assert conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone() == (0,)
        version = conn.execute("show server_version").fetchone()
    assert version is not None and int(str(version[0]).split(".")[0]) >= 13


def test_victoria_accepts_influx_line_protocol(victoria: VictoriaServer) -> None:
    body = b"infra,device=d1 temp=21.5 1700000000000000000\n"
    req = urllib.request.Request(f"{victoria.url}/api/v2/write", data=body, method="POST")
    assert urllib.request.urlopen(req, timeout=5).status == 204
    victoria.force_flush()
    url = f"{victoria.url}/api/v1/export?match[]=infra_temp"
    lines = urllib.request.urlopen(url, timeout=5).read().decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows and rows[0]["metric"]["device"] == "d1" and rows[0]["values"] == [21.5]
