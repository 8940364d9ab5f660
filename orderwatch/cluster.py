"""Local bytewax clusters (`--processes N`): ports, and a clean start without connect retries.

Timely has process j connect to every process i < j, and a refused connection costs a
one-second sleep before the retry. Children start together, so process 1 usually knocks
before process 0 has bound its port: every multi-process replay paid that second. A child
therefore waits until the lower processes on this host listen. It cannot knock to find out
(timely reads a handshake from every accepted connection and fails on a bare probe), so it
reads the kernel's socket table instead; where there is none (not Linux), or a peer is on
another host, it starts at once and timely's retry covers it as before.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.run import cli_main

_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"  # TCP_LISTEN in the kernel's `st` column
_TICK_S = 0.2
_NETWORKING = "failed to initialize networking: "  # how timely says it could not bind
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"})


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free right now (bound together so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_ports() -> set[int] | None:
    """Local TCP ports in LISTEN state on this host, or None where the table is not readable."""
    ports: set[int] = set()
    found = False
    for table in _TABLES:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for row in rows:
            cols = row.split()
            if len(cols) > 3 and cols[3] == _LISTEN:
                ports.add(int(cols[1].rpartition(":")[2], 16))
    return ports if found else None


def await_lower_peers(addresses: list[str], process_id: int, timeout_s: float = 15.0) -> bool:
    """Wait until the processes this one will connect to (ids below it) listen.

    True when they all do; False when it cannot tell (remote peer, no socket table) or the
    timeout passed (a peer failed to start): the caller goes on, timely retries.
    """
    wanted: set[int] = set()
    for address in addresses[:process_id]:
        host, _, port = address.rpartition(":")
        if host not in _LOCAL_HOSTS or not port.isdigit():
            return False
        wanted.add(int(port))
    deadline = time.monotonic() + timeout_s
    while True:
        listening = listening_ports()
        if listening is None:
            return False
        if wanted <= listening:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def run_flow(
    flow: Dataflow,
    *,
    workers: int = 1,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    **options: Any,
) -> None:
    """bytewax's `cli_main`, first waiting for the lower processes of a cluster to listen.

    A process that cannot listen at its own address (a host that does not resolve, a port in
    use) ends with that said, exit 1, instead of bytewax's traceback.
    """
    if addresses and process_id:
        await_lower_peers(addresses, process_id)
    try:
        cli_main(
            flow, workers_per_process=workers, process_id=process_id, addresses=addresses, **options
        )
    except RuntimeError as exc:
        why = str(exc).partition(_NETWORKING)[2]
        if not addresses or not why:
            raise
        own = addresses[process_id or 0]
        raise SystemExit(
            f"orderwatch: process {process_id or 0} cannot listen at {own} (--addresses): {why}"
        ) from None


def supervise(
    procs: list[subprocess.Popen[bytes]], on_tick: Callable[[], None] | None = None
) -> list[int]:
    """Wait for every child; once one fails, stop the rest (they would wait for it forever).

    Returns the exit codes, in order. `on_tick` runs every 0.2 s meanwhile. A child's exit
    wakes the wait at once (its pidfd, on Linux), so a replay does not end up to a tick late.
    """
    exits = _exit_signals(procs)
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                for p in procs:
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                break
            if on_tick is not None:
                on_tick()
            running = [fd for p, fd in zip(procs, exits, strict=False) if p.returncode is None]
            if running:
                select.select(running, [], [], _TICK_S)
            else:
                time.sleep(_TICK_S)
    finally:
        for fd in exits:
            os.close(fd)
    return [p.wait() for p in procs]


def _exit_signals(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """A pidfd per child, readable once it exits; none at all where the OS has no pidfds."""
    fds: list[int] = []
    try:
        for p in procs:
            fds.append(os.pidfd_open(p.pid))
    except (AttributeError, OSError):  # not Linux ≥ 5.3, or a child already reaped
        for fd in fds:
            os.close(fd)
        return []
    return fds
