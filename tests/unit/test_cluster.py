"""Local clusters: the socket table is read right, and a child waits for its lower peers."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from orderwatch.cluster import (
    _exit_signals,
    await_lower_peers,
    free_ports,
    listening_ports,
    supervise,
)


def _listen() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_listening_ports_sees_a_listener_and_not_a_bound_socket() -> None:
    listener, bound = _listen(), socket.socket()
    bound.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        ports = listening_ports()
        assert ports is not None
        assert port in ports
        assert bound.getsockname()[1] not in ports
    finally:
        listener.close()
        bound.close()
    ports = listening_ports()
    assert ports is not None and port not in ports


def test_free_ports_are_distinct_and_unused() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert not set(ports) & (listening_ports() or set())


def test_a_child_waits_until_every_lower_process_listens() -> None:
    p0, p1, p2 = free_ports(3)
    addresses = [f"127.0.0.1:{p}" for p in (p0, p1, p2)]
    opened: list[socket.socket] = []

    def start_peers_late() -> None:
        for port in (p0, p1):
            time.sleep(0.2)
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen()
            opened.append(s)

    thread = threading.Thread(target=start_peers_late)
    thread.start()
    try:
        assert await_lower_peers(addresses, 2, timeout_s=10)
        assert len(opened) == 2  # it returned only once the second peer listened
    finally:
        thread.join()
        for s in opened:
            s.close()


def test_process_zero_and_remote_peers_do_not_wait() -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    assert await_lower_peers([f"127.0.0.1:{port}"], 0)  # connects to nobody
    assert not await_lower_peers([f"10.1.2.3:{port}", "127.0.0.1:1"], 1)  # can't see it
    assert time.monotonic() - started < 5  # neither waited for a timeout


def test_a_peer_that_never_listens_ends_the_wait_at_the_timeout() -> None:
    (port,) = free_ports(1)
    assert not await_lower_peers([f"127.0.0.1:{port}", "127.0.0.1:1"], 1, timeout_s=0.3)


def test_a_failed_child_stops_the_others_instead_of_leaving_them_waiting() -> None:
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    started = time.monotonic()
    codes = supervise([failing, waiting])
    assert codes[0] == 3
    assert codes[1] == -signal.SIGTERM
    assert time.monotonic() - started < 60


def test_children_that_succeed_are_all_waited_for() -> None:
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    slower = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    ticks: list[int] = []
    assert supervise([quick, slower], lambda: ticks.append(1)) == [0, 0]
    assert ticks  # progress was reported while waiting


def test_a_childs_exit_wakes_the_wait_and_an_exited_child_does_not_spin_it() -> None:
    # The pidfd of a child that exited stays readable; waiting on it again would turn the
    # 0.2 s tick into a busy loop until the slower child ends.
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ending = subprocess.Popen([sys.executable, "-c", "pass"])
    fds = _exit_signals([running, ending])
    try:
        assert len(fds) == 2
        assert select.select(fds, [], [], 30)[0] == [fds[1]]  # only the one that ended
    finally:
        running.kill()
        for fd in fds:
            os.close(fd)
        running.wait()
        ending.wait()
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    slower = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    open_fds = len(os.listdir("/proc/self/fd"))
    ticks: list[int] = []
    assert supervise([quick, slower], lambda: ticks.append(1)) == [0, 0]
    assert 1 <= len(ticks) < 50  # ~6 ticks of 0.2 s; a spin makes thousands
    assert len(os.listdir("/proc/self/fd")) == open_fds  # the pidfds are closed


def test_a_cluster_failure_names_who_failed_and_who_was_stopped() -> None:
    from orderwatch.replay import _outcome

    assert _outcome([3, -signal.SIGTERM]) == "process(es) [0] failed, stopped [1]"
    assert _outcome([0, 1]) == "process(es) [1] failed"
    # stopped from outside, nobody failed on its own: those are the ones to name
    assert _outcome([-signal.SIGTERM, 0]) == "process(es) [0] failed"


def test_a_process_that_cannot_listen_at_its_address_says_so_without_a_traceback(
    tmp_path: Path,
) -> None:
    events = tmp_path / "ev.jsonl"
    events.write_text(
        '{"type":"order","ts":"2026-01-01T00:00:00Z","order_id":"A","status":"created"}\n'
    )
    replay = [sys.executable, "-m", "orderwatch", "replay", str(events), "--quiet"]
    replay += ["--config", "examples/orderwatch.yaml", "--alerts-out", str(tmp_path / "a")]
    taken = _listen()
    port = taken.getsockname()[1]
    cases = {  # .invalid never resolves (RFC 6761)
        "nosuchhost.invalid:2101": "failed to lookup address information",
        f"127.0.0.1:{port}": "Address already in use",
    }
    try:
        for own, why in cases.items():
            cluster = f"{own},127.0.0.1:{free_ports(1)[0]}"
            run = subprocess.run(
                [*replay, "--addresses", cluster, "--process-id", "0"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 1
            assert "Traceback" not in run.stderr
            assert f"process 0 cannot listen at {own} (--addresses): " in run.stderr
            assert why in run.stderr
        # the daemon too, after its control plane had started: it says it stopped unclean
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"sources: [{{kind: file, path: {events}}}]\n"
            f"http: {{listen: '127.0.0.1:{free_ports(1)[0]}'}}\nstate: {{dir: {tmp_path}/st}}\n"
        )
        own = f"127.0.0.1:{port}"
        cluster = f"{own},127.0.0.1:{free_ports(1)[0]}"
        run = subprocess.run(
            [*replay[:3], "run", "--config", str(cfg), "--addresses", cluster, "--process-id", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 1
        assert f"process 0 cannot listen at {own} (--addresses): " in run.stderr
        assert '{"clean": false, "why": "error", "event": "stopped"' in run.stderr
        assert "Traceback" not in run.stderr
    finally:
        taken.close()
