"""A serial port as an async byte stream that survives the radio being unplugged.

Transports only move bytes: parsing lives in :mod:`firmware_bridge.framing` (sans-I/O), so the same decoder
runs on a UART, a recorded capture or a fuzzer. Why this shape:

* Built on ``serial_asyncio_fast``: the port's file descriptor is registered with the event loop, so many
  ports are read concurrently by one thread with no port blocking another (no thread per port, which is
  what made thingsboard-gateway spin at 100 % CPU on a Pi).
* USB radios disappear (brown-out, loose cable, firmware update) and come back, usually at the same udev
  symlink (``/dev/serial/by-id/...``). On any port error :meth:`SerialTransport.chunks` logs it, counts it
  in ``reconnects_total``, backs off with jitter (:class:`~firmware_bridge.backoff.Backoff`, capped
  at ``max_backoff``) and reopens the same path, forever, unless ``reconnect=False``.
* Writes (downlinks, acks, config) go through one :class:`asyncio.Lock`, so several writers never
  interleave their frames on the wire: the classic "serial line shared by several threads without a lock".
* Every network-ish call has a timeout: opening (``open_timeout``), draining a write (``write_timeout``).

Errors surface as :class:`~firmware_bridge.errors.TransportError` (``raise ... from`` the pyserial error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any, Self

import serial
import serial_asyncio_fast

from firmware_bridge.backoff import Backoff
from firmware_bridge.errors import TransportError

__all__ = ["SerialTransport"]

log = logging.getLogger(__name__)

_PORT_ERRORS = (OSError, serial.SerialException)  # SerialException is an OSError subclass; listed for clarity


class SerialTransport:
    """``async with SerialTransport("/dev/ttyUSB0") as port: async for chunk in port.chunks(): ...``.

    ``reconnect=True`` (default): entering never fails because the device is absent; :meth:`chunks` keeps
    (re)opening it with backoff. ``reconnect=False``: a failed open or a port error raises
    :class:`TransportError`. Extra keyword arguments (``bytesize``, ``parity``, ``rtscts`` ...) go to
    :class:`serial.Serial`; the port is locked ``exclusive`` unless ``exclusive=False`` is passed.

    Counters: ``reconnects_total`` (port errors followed by a reopen attempt), ``bytes_read_total``,
    ``bytes_written_total``, ``open_failures_total``. ``connected`` tells whether the port is open now.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        *,
        reconnect: bool = True,
        max_backoff: float = 30.0,
        min_backoff: float = 0.2,
        read_size: int = 4096,
        open_timeout: float = 5.0,
        write_timeout: float = 5.0,
        rng: random.Random | None = None,
        **serial_options: Any,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.reconnect = reconnect
        self.read_size = read_size
        self.open_timeout = open_timeout
        self.write_timeout = write_timeout
        # Exclusive by default (flock): two processes reading one UART would each get half of every frame.
        serial_options.setdefault("exclusive", True)
        self.serial_options = serial_options
        self._backoff = Backoff(
            initial=min(min_backoff, max_backoff), maximum=max_backoff, rng=rng or random.Random()
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._opened = asyncio.Event()
        self._closed = False
        self._closing = asyncio.Event()  # wakes a reader sleeping in backoff when another task closes us
        self.reconnects_total = 0
        self.open_failures_total = 0
        self.bytes_read_total = 0
        self.bytes_written_total = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        state = "open" if self.connected else "closed"
        return f"<SerialTransport {self.port} @{self.baudrate} {state} reconnects={self.reconnects_total}>"

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def __aenter__(self) -> Self:
        self._closed = False
        self._closing.clear()
        try:
            await self._open()
        except TransportError:
            if not self.reconnect:
                raise
            # The radio may be plugged in later; chunks() keeps trying with backoff.
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        self._closing.set()
        await self._close()

    async def wait_open(self) -> None:
        """Wait until the port is open (use with ``asyncio.timeout``)."""
        await self._opened.wait()

    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self.open_timeout):
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.port, baudrate=self.baudrate, **self.serial_options
                )
        except (*_PORT_ERRORS, TimeoutError, ValueError) as exc:
            self.open_failures_total += 1
            self.last_error = f"open {self.port}: {exc}"
            raise TransportError(f"cannot open serial port {self.port}: {exc}") from exc
        self._reader, self._writer = reader, writer
        self._backoff.reset()
        self._opened.set()
        log.info("serial port %s open at %d baud", self.port, self.baudrate)

    async def _close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        self._opened.clear()
        if writer is None:
            return
        writer.close()
        # Closing flushes and closes the fd in an executor thread; on a vanished device that can fail,
        # which serial_asyncio_fast already logs at debug. Never hang shutdown on it.
        with contextlib.suppress(*_PORT_ERRORS, TimeoutError):
            async with asyncio.timeout(self.write_timeout):
                await writer.wait_closed()

    async def _reopen(self) -> None:
        """Reopen the port with backoff until it works (or raise if reconnecting is off)."""
        while not self._closed:
            delay = self._backoff.next()
            log.warning(
                "serial port %s unavailable (%s); retrying in %.2f s", self.port, self.last_error, delay
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
            if self._closed:
                return
            try:
                await self._open()
                return
            except TransportError:
                continue

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Yield bytes as they arrive (chunk boundaries mean nothing); ends when the transport is closed.

        One consumer per transport: two iterators would each get part of the stream. After a reconnect
        the stream simply continues; feed it to the same decoder, whose next delimiter resynchronises it.
        """
        while not self._closed:
            reader = self._reader
            if reader is None:
                if not self.reconnect:
                    raise TransportError(f"serial port {self.port} is not open")
                await self._reopen()
                continue
            try:
                data = await reader.read(self.read_size)
                if not data:
                    raise serial.SerialException("port closed (end of stream)")
            except _PORT_ERRORS as exc:
                if self._closed:
                    return
                self.last_error = f"read {self.port}: {exc}"
                log.warning("serial port %s read error: %s", self.port, exc)
                await self._close()
                if not self.reconnect:
                    raise TransportError(f"serial port {self.port} failed: {exc}") from exc
                self.reconnects_total += 1
                continue
            self.bytes_read_total += len(data)
            yield data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` whole: concurrent writers are serialised, never interleaved.

        Bytes go to the port's file descriptor directly, waiting for writability on the event loop, rather
        than through ``serial_asyncio_fast``'s buffered ``write()``: that path leaves its writer callback
        registered after a partial write (an ``AssertionError`` on every loop iteration; see
        home-assistant-libs/pyserial-asyncio-fast PR #36) and pyserial's own non-blocking ``write()`` spins
        on ``EAGAIN`` (pyserial issue #280). Both are real on a slow UART with a full output buffer.
        """
        async with self._write_lock:
            writer = self._writer
            if writer is None or writer.is_closing():
                raise TransportError(f"serial port {self.port} is not open")
            port = writer.get_extra_info("serial")
            view = memoryview(bytes(data))
            try:
                fd = port.fileno()
                async with asyncio.timeout(self.write_timeout):
                    while view:
                        if self._writer is not writer or writer.is_closing():
                            raise serial.SerialException("port closed during write")
                        try:
                            n = os.write(fd, view)
                        except BlockingIOError:
                            n = 0
                        view = view[n:]
                        if view:
                            await _writable(fd)
            except (*_PORT_ERRORS, TimeoutError) as exc:
                self.last_error = f"write {self.port}: {exc}"
                raise TransportError(f"write to serial port {self.port} failed: {exc}") from exc
            self.bytes_written_total += len(data)


async def _writable(fd: int) -> None:
    """Wait until ``fd`` accepts more bytes."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
