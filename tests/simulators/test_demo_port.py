"""``vigil demo`` keeps the cloud's port bound from the moment it is chosen until uvicorn serves on it.

It used to find a free port, close the probe, and let uvicorn bind it later (after the schema, the users
and the registry): two demos starting together (two engineers, or a test next to a demo) could both
find 8080 free, and the second stopped with "[Errno 98] address already in use" (seen 2026-11-27)."""

from __future__ import annotations

import socket

from simulators.demo import bind_free


def test_a_taken_port_gets_another_and_the_chosen_one_stays_taken() -> None:
    with socket.socket() as other:  # someone else's demo holds the preferred port
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        mine = bind_free(taken)
        try:
            port = mine.getsockname()[1]
            assert port != taken
            # the port is held, not merely found free: nobody else can bind it before the cloud serves
            with socket.socket() as late:
                try:
                    late.bind(("127.0.0.1", port))
                except OSError:
                    pass
                else:
                    raise AssertionError(f"port {port} was free again after bind_free chose it")
        finally:
            mine.close()


def test_a_free_preferred_port_is_the_one_bound() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    mine = bind_free(free)
    try:
        assert mine.getsockname()[1] == free
    finally:
        mine.close()
