"""`vigil gateway requeue-dead-letter`: after a cloud fix, dead-lettered records go back to the outbox.

Refused while the daemon answers on its metrics port (it keeps the outbox's byte count in memory).
"""

from __future__ import annotations

import http.server
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.outbox import Outbox
from tests.edge.helpers import alert
from tests.servers import free_port
from vigil_cli import main


def test_requeue_puts_dead_letters_back_only_while_the_daemon_is_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    f = tmp_path / "gateway.toml"
    f.write_text(f'[gateway]\nid = "gw-rq"\ndata_dir = "{tmp_path / "data"}"\n\n[metrics]\nport = {port}\n')
    cfg = parse_config(f.read_text(), f)
    cfg.outbox_path.parent.mkdir(parents=True)
    with Outbox(cfg.outbox_path) as ob:
        ob.commit([], [alert(1, t=time.time())])
        batch = ob.next_batch("gw-rq")
        assert batch is not None and ob.dead_letter(batch.batch_id, "http_422") == 1
        assert ob.stats().depth["alert"] == 0

    # something answers on the metrics port: the daemon is running, nothing is touched
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="fake-metrics", daemon=True)
    thread.start()
    try:
        assert main(["gateway", "requeue-dead-letter", "--config", str(f)]) == 1
        err = capsys.readouterr().err
        assert err.index("请先停止") < err.index("stop it first")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    with closing(sqlite3.connect(cfg.outbox_path)) as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letter").fetchone() == (1,)

    assert main(["gateway", "requeue-dead-letter", "--config", str(f)]) == 0
    out = capsys.readouterr().out
    assert "1 条记录" in out and "1 dead-lettered record(s) put back" in out
    with Outbox(cfg.outbox_path) as ob:
        assert ob.stats().depth["alert"] == 1
        again = ob.next_batch("gw-rq")
        assert again is not None and again.batch_id != batch.batch_id
    with closing(sqlite3.connect(cfg.outbox_path)) as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letter").fetchone() == (0,)
