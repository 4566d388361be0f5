"""A small real HTTP cloud for the uplink tests: uvicorn + starlette on a free port.

It implements the ingest side of ``alerts/contract.py`` (``POST /api/v1/ingest/batches``): it validates the
UplinkBatch, "commits" it in memory, and acks only then; a repeated batch id is answered ``duplicate=True``.
Failure modes are switched by the test: ``"503"``, ``"slow"`` (commits, answers after the client's timeout),
``"commit_then_503"`` (stores, then loses the answer: the gateway must retry with the same id),
``"garbage"`` (200 with a body that is not an ack) and stopping the server (connection refused).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from alerts.contract import HTTP_PATH, UplinkAck, UplinkBatch
from alerts.uplink_body import decode_batch, media_type


@dataclass
class CloudStub:
    port: int
    token: str = "tok"
    mode: str = "ok"
    batches: dict[str, UplinkBatch] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # batch ids in the order first received
    requests: int = 0
    max_body: int = 16 * 1024 * 1024
    received: asyncio.Event = field(default_factory=asyncio.Event)
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None

    async def ingest(self, request: Request) -> Response:
        self.requests += 1
        self.received.set()
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Response(status_code=401)
        if self.mode == "503":
            return Response(status_code=503)
        body = await request.body()
        if len(body) > self.max_body:
            return JSONResponse({"error": "payload_too_large", "detail": "over the limit"}, status_code=413)
        if self.mode == "garbage":
            return Response(b"<html>proxy says hi</html>", status_code=200)
        batch = decode_batch(body, media_type(request.headers.get("content-type")) or "")
        dup = batch.batch_id in self.batches
        if not dup:
            self.batches[batch.batch_id] = batch
            self.order.append(batch.batch_id)
        if self.mode == "slow":
            await asyncio.sleep(2.5)  # committed, but the answer comes after the client gave up
        if self.mode == "commit_then_503" and not dup:
            self.mode = "ok"
            return Response(status_code=503)
        ack = UplinkAck(
            batch_id=batch.batch_id,
            duplicate=dup,
            committed_at=time.time(),
            telemetry_stored=0 if dup else sum(len(b) for b in batch.telemetry),
            alerts_stored=0 if dup else len(batch.alerts),
        )
        return JSONResponse(ack.model_dump(mode="json"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = Starlette(routes=[Route(HTTP_PATH, self.ingest, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", access_log=False
            )
        )
        self.task = asyncio.create_task(self.server.serve(), name="cloud-stub")
        while not self.server.started:
            await asyncio.sleep(0.01)  # uvicorn exposes no start event; bounded by the test timeout

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task
            self.server = self.task = None

    def readings(self) -> list[tuple[str, int, float]]:
        out: list[tuple[str, int, float]] = []
        for bid in self.order:
            for block in self.batches[bid].telemetry:
                out += zip(block.device_id, block.seq, block.time, strict=True)
        return out

    def alert_ids(self) -> list[str]:
        return [a.alert_id for bid in self.order for a in self.batches[bid].alerts]
