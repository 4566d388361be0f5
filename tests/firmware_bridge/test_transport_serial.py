"""SerialTransport on real pseudo-terminal pairs (os.openpty): concurrency, locking, reconnect.

Frames are Vigil link frames (docs/framing.md); the decoder is firmware_bridge.framing.FrameDecoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from firmware_bridge.errors import TransportError
from firmware_bridge.framing import FrameDecoder, LinkFrame
from firmware_bridge.transports import SerialTransport


@dataclass
class Pty:
    """A pseudo-terminal pair: the test plays the radio on ``master``; the transport opens ``path``."""

    master: int
    slave: int
    path: str
    closed: bool = field(default=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self.slave)


def open_pty() -> Pty:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo / line discipline before pyserial configures the port itself
    return Pty(master, slave, os.ttyname(slave))


@pytest.fixture
def ptys() -> Iterator[Callable[[], Pty]]:
    made: list[Pty] = []

    def make() -> Pty:
        made.append(open_pty())
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture(autouse=True)
async def no_loop_errors() -> AsyncIterator[list[dict[str, object]]]:
    """Fail on anything the event loop's exception handler sees (errors in transport callbacks)."""
    errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)
    assert errors == []


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a counter the transport exposes (there is no event for 'the port failed')."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def make_frames(port_no: int, n: int, rng: random.Random) -> list[LinkFrame]:
    return [
        LinkFrame(f"{port_no:08x}{i:08x}", rng.randbytes(rng.randrange(0, 40)) + b"\xc0\xdb"[: i % 3])
        for i in range(n)
    ]


def write_in_random_chunks(fd: int, data: bytes, rng: random.Random) -> None:
    i = 0
    while i < len(data):
        step = rng.randrange(1, 300)
        view = data[i : i + step]
        while view:
            view = view[os.write(fd, view) :]
        i += step


async def read_frames(transport: SerialTransport, want: int, decoder: FrameDecoder) -> list[LinkFrame]:
    got: list[LinkFrame] = []
    async for chunk in transport.chunks():
        got += decoder.feed(chunk)
        if len(got) >= want:
            break
    return got


async def test_three_ports_at_once_carry_thousands_of_frames(ptys: Callable[[], Pty]) -> None:
    n = 2000
    pairs = [ptys() for _ in range(3)]
    rng = random.Random(1)
    expected = [make_frames(k, n, rng) for k in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(SerialTransport(p.path, reconnect=False)) for p in pairs
        ]
        decoders = [FrameDecoder() for _ in pairs]
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            readers = [
                tg.create_task(read_frames(t, n, d), name=f"read-{k}")
                for k, (t, d) in enumerate(zip(transports, decoders, strict=True))
            ]
            for k, p in enumerate(pairs):
                # A little line noise first, then every frame, split at random points.
                stream = b"\x55\xaa noise" + b"".join(f.encode() for f in expected[k])
                tg.create_task(
                    asyncio.to_thread(write_in_random_chunks, p.master, stream, random.Random(k)),
                    name=f"write-{k}",
                )
    for k in range(3):
        assert readers[k].result() == expected[k]
        assert decoders[k].frames_total == n
        assert decoders[k].rejects == {"short": 1}  # the noise before the first frame's leading END
        assert transports[k].reconnects_total == 0
        assert transports[k].bytes_read_total == len(b"\x55\xaa noise") + sum(
            len(f.encode()) for f in expected[k]
        )


async def test_concurrent_writers_never_interleave(ptys: Callable[[], Pty]) -> None:
    p = ptys()
    n_writers, per_writer = 4, 150
    rng = random.Random(2)
    frames = {
        w: [LinkFrame(f"{w:016x}", rng.randbytes(rng.randrange(100, 900))) for _ in range(per_writer)]
        for w in range(n_writers)
    }
    total = n_writers * per_writer
    received: list[LinkFrame] = []
    decoder = FrameDecoder(max_frame=1024)
    done = threading.Event()

    def radio_reads() -> None:
        while len(received) < total:
            data = os.read(p.master, 65536)
            received.extend(decoder.feed(data))
        done.set()

    async with SerialTransport(p.path, reconnect=False) as t:

        async def writer(w: int) -> None:
            for f in frames[w]:
                await t.write(f.encode())

        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            reader = tg.create_task(asyncio.to_thread(radio_reads), name="radio-read")
            for w in range(n_writers):
                tg.create_task(writer(w), name=f"writer-{w}")
        assert done.is_set() and reader.done()
        assert t.bytes_written_total == sum(len(f.encode()) for fs in frames.values() for f in fs)
    assert decoder.rejects.total() == 0
    for w in range(n_writers):  # every frame intact, each writer's frames in its own order
        assert [f for f in received if f.device_id == f"{w:016x}"] == frames[w]


async def test_device_disappears_and_reappears_at_the_same_path(
    ptys: Callable[[], Pty], tmp_path: Path
) -> None:
    link = tmp_path / "radio0"  # like a udev symlink /dev/serial/by-id/usb-...
    first = ptys()
    link.symlink_to(first.path)
    frame = LinkFrame("00000000000000a1", b"before")
    after = LinkFrame("00000000000000a1", b"after")
    decoder = FrameDecoder()
    got: list[LinkFrame] = []
    async with SerialTransport(str(link), min_backoff=0.02, max_backoff=0.1) as t:

        async def consume() -> None:
            async for chunk in t.chunks():
                got.extend(decoder.feed(chunk))
                if after in got:
                    return

        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            tg.create_task(consume(), name="consume")
            os.write(first.master, frame.encode())
            await until(lambda: got == [frame])

            first.close()  # unplugged: the slave side reads EIO
            link.unlink()
            await until(lambda: t.reconnects_total == 1 and t.open_failures_total >= 1)
            assert not t.connected

            second = ptys()  # plugged back in: a new pty behind the same path
            link.symlink_to(second.path)
            await t.wait_open()
            os.write(second.master, after.encode())
    assert got == [frame, after]
    assert t.reconnects_total == 1
    assert decoder.rejects.total() == 0


async def test_absent_device_at_start_is_waited_for(ptys: Callable[[], Pty], tmp_path: Path) -> None:
    link = tmp_path / "late"
    async with SerialTransport(str(link), min_backoff=0.02, max_backoff=0.05) as t:
        assert not t.connected
        with pytest.raises(TransportError, match="not open"):
            await t.write(b"x")
        chunks = t.chunks()
        first = asyncio.ensure_future(anext(chunks))
        await until(lambda: t.open_failures_total >= 2)
        p = ptys()
        link.symlink_to(p.path)
        async with asyncio.timeout(10):
            await t.wait_open()
            os.write(p.master, b"hello")
            data = await first
        await chunks.aclose()
    assert data == b"hello"


async def test_no_reconnect_raises_typed_errors(tmp_path: Path, ptys: Callable[[], Pty]) -> None:
    with pytest.raises(TransportError, match="cannot open"):
        async with SerialTransport(str(tmp_path / "missing"), reconnect=False):
            pass
    p = ptys()
    async with SerialTransport(p.path, reconnect=False) as t:
        p.close()
        with pytest.raises(TransportError, match="failed"):
            async with asyncio.timeout(10):
                async for _ in t.chunks():
                    pass
        assert not t.connected


async def test_port_is_locked_against_a_second_reader(ptys: Callable[[], Pty]) -> None:
    p = ptys()
    async with SerialTransport(p.path, reconnect=False) as first:
        assert first.connected
        with pytest.raises(TransportError, match="cannot open"):
            async with SerialTransport(p.path, reconnect=False):
                pass
        os.write(p.master, b"still mine")
        async with asyncio.timeout(10):
            assert await anext(first.chunks()) == b"still mine"


async def test_closing_wakes_a_reader_sleeping_in_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []
    async with SerialTransport(str(tmp_path / "absent"), min_backoff=30, max_backoff=30) as t:

        async def consume() -> None:
            async for chunk in t.chunks():
                got.append(chunk)

        consumer = asyncio.create_task(consume(), name="consume")
        await until(lambda: "retrying in" in caplog.text)  # the reader is now in a 15-30 s backoff
    async with asyncio.timeout(2):  # ... and closing from this task ends it at once
        await consumer
    assert got == [] and t.open_failures_total == 1
