"""Start the real daemon (and real Prometheus) as subprocesses on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def run_once(tmp: Path, config: dict[str, Any], name: str = "once") -> subprocess.CompletedProcess:
    """`orderwatch run --config` with `config` as written, for a run expected to end by itself
    (a refusal at start); its exit code and output."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return subprocess.run(
        [sys.executable, "-m", "orderwatch", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Daemon:
    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, state: Path, out: Path, err: Path
    ) -> None:
        self.proc, self.port, self.state, self.out, self.err = proc, port, state, out, err

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(self.url + path)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def console(self) -> str:
        return self.out.read_text()

    def logs(self) -> str:
        return self.err.read_text()


@contextmanager
def daemon(
    tmp: Path,
    config: dict[str, Any],
    *,
    name: str = "d",
    state: Path | None = None,
    args: tuple[str, ...] = (),
    new_session: bool = False,
) -> Iterator[Daemon]:
    """Run `orderwatch run --config` with `config` (http and state filled in) during the block;
    `new_session`: in a process group of its own, as a terminal's foreground job is."""
    port = free_port()
    state = state or tmp / f"{name}-state"
    cfg = {"http": {"listen": f"127.0.0.1:{port}"}, "state": {"dir": str(state)}, **config}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    with out.open("ab") as fo, err.open("ab") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orderwatch", "run", "--config", str(path), *args],
            stdout=fo,
            stderr=fe,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=new_session,
        )
    d = Daemon(proc, port, state, out, err)
    try:
        wait_for(lambda: d.get("/readyz")[0] == 200, 30, "daemon ready")
        yield d
    except BaseException:
        # pytest shows a failed test's captured stderr: the daemon's own account of it
        for f in (err, out):
            sys.stderr.write(f"--- {f.name}, last 60 lines ---\n")
            sys.stderr.write("\n".join(f.read_text(errors="replace").splitlines()[-60:]) + "\n")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def require(binary: str) -> str:
    """The path of a real component's binary; its absence fails the test (never skips)."""
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} is not installed: run `make test` (it installs it)")
    return path


@contextmanager
def prometheus(tmp: Path, targets: list[str], *, rules: Path | None = None) -> Iterator[str]:
    """A real Prometheus scraping `targets` every second; yields its base URL."""
    binary = require("prometheus")
    port = free_port()
    conf: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "orderwatch", "static_configs": [{"targets": targets}]}],
    }
    if rules is not None:
        conf["rule_files"] = [str(rules)]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(conf))
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(url + "/-/ready")[0] == 200, 60, "prometheus ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def prom_query(url: str, expr: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    status, body = http_get(f"{url}/api/v1/query?query={quote(expr)}")
    assert status == 200, body
    return list(body["data"]["result"])
