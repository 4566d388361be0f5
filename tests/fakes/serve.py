"""Run one fake provider in its own process (benchmarks): ``python -m tests.fakes.serve wecom|dingtalk``.

Prints one JSON line with what a client needs (URLs, credentials), then serves until terminated.
``GET /_fake/accepted`` lists what it accepted, with receipt times.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading

from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.wecom import FakeWeCom


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "wecom"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if kind == "wecom":
        wecom = FakeWeCom().start()
        info = {"url": wecom.url, "api_url": wecom.api_url, "corp_id": wecom.corp_id,
                "corp_secret": wecom.corp_secret, "agent_id": wecom.agent_id}  # fmt: skip
        fake: FakeWeCom | FakeDingTalk = wecom
    else:
        ding = FakeDingTalk().start()
        info = {"url": ding.url, "robot_url": ding.robot_url, "secret": ding.secret}
        fake = ding
    print(json.dumps(info), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
