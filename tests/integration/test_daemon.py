"""The daemon as users run it: a subprocess answering over real HTTP, scraped by real Prometheus."""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import pickle
import shutil
import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orderwatch.alerts.store import DB_NAME, AlertStore
from orderwatch.domain.alert import FIRING, AlertChange
from orderwatch.pipelines import snapshots
from orderwatch.pipelines.snapshots import SHARD_STEP
from tests.factories import CONTRACT_RULES
from tests.integration.harness import (
    daemon,
    free_port,
    http_get,
    prom_query,
    prometheus,
    run_once,
    wait_for,
)

SAMPLE = Path("examples/sample-events.jsonl")


def sample_config(events: Path) -> dict[str, Any]:
    return {
        "sources": [{"kind": "file", "path": str(events), "follow": True}],
        "status_map": {"WAIT_SELLER_SEND_GOODS": "paid", "已付款": "paid"},
        "rules": CONTRACT_RULES,
    }


def firing_rules(d: Any) -> set[tuple[str, str]]:
    status, body = d.get("/v1/alerts")
    assert status == 200
    return {(a["labels"]["rule"], a["labels"]["order_id"]) for a in body["alerts"]}


def test_daemon_serves_alerts_timelines_and_metrics(tmp_path: Path) -> None:
    """Alerts, an order's timeline, JSON errors and parseable non-zero metrics over HTTP."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    with daemon(tmp_path, sample_config(events)) as d:
        wait_for(lambda: ("paid_without_wms", "O1002") in firing_rules(d), 30, "漏发 alert")
        got = firing_rules(d)
        assert {("wms_without_payment", "O1004"), ("paid_not_shipped", "O1002")} <= got
        assert ("paid_without_wms", "O1001") not in got  # the healthy order
        _, body = d.get("/v1/alerts")
        assert {"amount_mismatch", "illegal_transition"} <= {
            a["labels"]["rule"] for a in body["anomalies"]
        }

        status, timeline = d.get("/v1/orders/O1002")
        assert status == 200
        assert timeline["status"] == "paid"
        assert [e["type"] for e in timeline["events"]] == ["order", "payment", "order"]

        status, err = d.get("/v1/orders/NOPE")
        assert status == 404 and "NOPE" in err["error"]
        # O1011's two lines (cut short; a naive timestamp) and O1012's one were rejected
        status, err = d.get("/v1/orders/O1011")
        assert status == 404 and err["rejected_count"] == 2, err
        why = "(malformed_json, naive_timestamp; the latest at file:events.jsonl 50)"
        assert why in err["error"]
        status, err = d.get("/v1/orders/O1012")
        assert [e["reason"] for e in err["rejected_events"]] == ["unknown_status"]
        assert (timeline["rejected_count"], timeline["rejected_events"]) == (0, [])
        with events.open("a") as f:  # a status update for a tracked order, stamped naively
            f.write(_line(type="order", ts="2026-11-11T01:00:00", order_id="O1002", status="x"))
        wait_for(lambda: d.get("/v1/orders/O1002")[1]["rejected_count"] == 1, 20, "rejected")
        _, timeline = d.get("/v1/orders/O1002")
        assert timeline["rejected_events"][0]["position"] == "72"
        assert timeline["status"] == "paid"  # the rejected line changed nothing
        status, err = d.get("/v1/orders/stuck?limit=0")
        assert status == 400 and "limit" in err["error"]
        status, stuck = d.get("/v1/orders/stuck?rule=paid_not_shipped")
        assert status == 200
        assert [o["order_id"] for o in stuck["orders"]] == ["O1002", "O1005", "O1008"]
        for bad, word in [
            ("/v1/orders/O1002?x=1", "'x'"),
            ("/v1/alerts?severity=bogus", "info, warning, critical"),
            ("/v1/orders/stuck?rule=nope", "paid_not_allocated"),
            ("/v1/orders/stuck?limit=1&limit=2", "limit"),
        ]:
            status, err = d.get(bad)
            assert status == 400 and word in err["error"], (bad, err)

        status, text = d.get("/metrics")
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }
        events_total = sum(v for (n, _), v in samples.items() if n == "orderwatch_events_total")
        assert events_total == 68
        assert (
            samples[
                (
                    "orderwatch_events_rejected_total",
                    (("reason", "naive_timestamp"), ("source", "file:events.jsonl")),
                )
            ]
            == 2  # the sample's and the one appended above
        )
        assert samples[("orderwatch_orders", (("status", "paid"),))] >= 1
        assert (
            samples[
                (
                    "orderwatch_alerts_firing",
                    (
                        ("alertname", "OrderGap"),
                        ("rule", "paid_without_wms"),
                        ("severity", "critical"),
                    ),
                )
            ]
            == 1
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _line(**kw: Any) -> str:
    return json.dumps(kw) + "\n"


def _tailed(events: Path, **extra: Any) -> dict[str, Any]:
    """A daemon tailing `events`, quick to notice a quiet input (1 s lateness and idle)."""
    source = {"kind": "file", "path": str(events), "follow": True}
    return {"sources": [source], "lateness": "1s", "idle_after": "1s", **extra}


def test_quiet_input_fires_deadlines_on_the_wall_clock(tmp_path: Path) -> None:
    """No new events: after idle_after the watermark follows the wall clock and the alert fires."""
    events = tmp_path / "live.jsonl"
    events.write_text("")
    cfg = _tailed(
        events, rules={"stuck": [{"name": "paid_4s", "statuses": ["paid"], "max_dwell": "4s"}]}
    )
    with daemon(tmp_path, cfg) as d:
        entered = _now_ms()
        with events.open("a") as f:
            f.write(_line(type="order", ts=entered, order_id="L1", status="paid"))
        wait_for(lambda: d.get("/v1/orders/L1")[0] == 200, 20, "order read")
        assert firing_rules(d) == set()  # the deadline is still ahead
        wait_for(lambda: firing_rules(d) == {("paid_4s", "L1")}, 30, "deadline on a quiet input")
        alert = d.get("/v1/alerts")[1]["alerts"][0]
        assert alert["startsAt"] == datetime.fromtimestamp((entered + 4000) / 1000, UTC).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
        left = _now_ms()
        with events.open("a") as f:
            f.write(_line(type="order", ts=left, order_id="L1", status="allocated"))
        wait_for(lambda: firing_rules(d) == set(), 30, "resolution")
    assert "RESOLVED" in d.console()


def test_a_file_quiet_before_the_start_is_quiet_since_its_last_write(tmp_path: Path) -> None:
    """A restart without recovery (or a first start) reads the file again: its newest event
    was written 60 s ago. The quiet spell counted from the read, so the watermark trailed the
    wall clock by those 60 s for good and every deadline fired 60 s late; it counts from the
    file's last write now, as if the daemon had been running."""
    events = tmp_path / "live.jsonl"
    written = _now_ms() - 60_000
    events.write_text(_line(type="order", ts=written, order_id="Q1", status="paid"))
    os.utime(events, ns=(written * 1_000_000, written * 1_000_000))
    rule = {"name": "paid_10s", "statuses": ["paid"], "max_dwell": "10s"}
    with daemon(tmp_path, _tailed(events, rules={"stuck": [rule]})) as d:
        wait_for(lambda: firing_rules(d) == {("paid_10s", "Q1")}, 30, "the deadline long past")
        lag = _metric(d, "orderwatch_watermark_lag_seconds")
        assert lag < 30, f"the watermark trails the wall clock by {lag:.1f} s (60 s: the bug)"


def test_a_backlog_in_several_files_fires_only_what_it_does_not_clear(tmp_path: Path) -> None:
    """An hour of history in three files, one per event type, read at start (a first start,
    or a restart without recovery). The payments file, one line an order, raced ahead of the
    orders file, ten lines an order, through the same hour: the watermark followed it and
    fired a 漏发 for hundreds of orders whose WMS events were still unread (then resolved
    them as late). A source still reading its backlog holds the watermark now."""
    start = _now_ms() - 65 * 60_000
    lines: dict[str, list[str]] = {"order": [], "payment": [], "wms": []}
    for i in range(300):
        t, oid = start + i * 12_000, f"B{i}"
        lines["order"] += [_line(type="order", ts=t, order_id=oid, status="created")]
        lines["order"] += [
            _line(type="order", ts=t + j, order_id=oid, status="paid") for j in range(9)
        ]
        lines["payment"].append(
            _line(type="payment", ts=t, order_id=oid, pay_no=f"P{i}", status="success")
        )
        if i != 7:  # the one push that was lost
            wms = {"type": "wms", "order_id": oid, "action": "outbound_created"}
            lines["wms"].append(_line(**wms, ts=t + 120_000))
    sources = []
    for kind, rows in lines.items():
        path = tmp_path / f"{kind}.jsonl"
        path.write_text("".join(rows))
        sources.append({"kind": "file", "path": str(path), "follow": True, "type": kind})
        sources[-1]["batch_size"] = 200
    gap = {"paid_without_wms": {"within": "10m", "severity": "critical"}}
    cfg = {"sources": sources, "lateness": "60s", "idle_after": "2s", "rules": {"gaps": gap}}
    with daemon(tmp_path, cfg) as d:
        total = sum(map(len, lines.values()))
        wait_for(lambda: _metric(d, "orderwatch_events_total") == total, 60, "the backlog read")
        wait_for(lambda: firing_rules(d), 30, "the lost push's 漏发")
        time.sleep(3)  # idle: the watermark is at the wall clock, past every deadline
        assert firing_rules(d) == {("paid_without_wms", "B7")}
        assert d.console().count("FIRING") == 1, d.console()[:2000]
        assert _metric(d, "orderwatch_events_late_total") == 0


def test_the_console_line_of_an_alert_names_its_orders_rejected_inputs(tmp_path: Path) -> None:
    """The 漏发 of an order whose WMS event came without a UTC offset: the warehouse did get
    the push, and the console line says where to look instead of reading as a lost push."""
    events = tmp_path / "live.jsonl"
    events.write_text("")
    cfg = _tailed(
        events, rules={"gaps": {"paid_without_wms": {"within": "2s", "severity": "critical"}}}
    )
    with daemon(tmp_path, cfg) as d:
        now = _now_ms()
        with events.open("a") as f:
            f.write(_line(type="order", ts=now, order_id="W/1", status="created"))
            f.write(_line(type="payment", ts=now, order_id="W/1", pay_no="P1", status="success"))
            wms = {"type": "wms", "order_id": "W/1", "action": "outbound_created"}
            f.write(_line(**wms, ts="2026-11-25T09:00:00"))
        wait_for(lambda: "paid_without_wms W/1" in d.console(), 20, "the 漏发 alert")
        (line,) = [x for x in d.console().splitlines() if "paid_without_wms W/1" in x]
        assert line.endswith("[1 of its inputs rejected (naive_timestamp): GET /v1/orders/W%2F1]")
        status, timeline = d.get("/v1/orders/W%2F1")
        assert status == 200 and timeline["rejected_events"][0]["reason"] == "naive_timestamp"


def test_restart_without_a_rule_resolves_its_alerts(tmp_path: Path) -> None:
    """Its alerts would otherwise stay firing forever, unfilterable by `rule` (ghost pages)."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    state = tmp_path / "state"
    with daemon(tmp_path, sample_config(events), name="first", state=state) as d:
        wait_for(lambda: len(firing_rules(d)) == 12, 30, "sample alerts")
        before = firing_rules(d)
    assert any(rule == "logistics_stalled" for rule, _ in before)
    cfg = sample_config(events)
    rules = copy.deepcopy(cfg["rules"])
    rules["stuck"] = [r for r in rules["stuck"] if r["name"] != "logistics_stalled"]
    with daemon(tmp_path, {**cfg, "rules": rules}, name="second", state=state) as d:
        after = {(r, o) for r, o in before if r != "logistics_stalled"}
        wait_for(lambda: firing_rules(d) == after, 30, "the others still firing")
        _, text = d.get("/metrics")
        firing = {
            s.labels["rule"]: s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "orderwatch_alerts_firing" and s.value
        }
        assert "logistics_stalled" not in firing and firing["paid_without_wms"] > 0
    assert "RESOLVED" in d.console() and "logistics_stalled" in d.console()
    assert "rules no longer configured" in d.logs()


@pytest.mark.parametrize("args", [(), ("--processes", "2")], ids=["1-process", "2-processes"])
def test_a_restart_without_its_orders_ends_what_its_input_no_longer_raises(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """No recovery, and the input rotated away while stopped: the alerts left firing had no
    order left to end them and stayed firing for good. Each now ends, worded as unconfirmed,
    once the watermark passes it; those the new input raises again go on. With 2 processes,
    process 0 (which holds the alert store) hands each to its shard's process."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    state = tmp_path / "state"
    with daemon(tmp_path, sample_config(events), name="first", state=state, args=args) as d:
        wait_for(lambda: len(firing_rules(d)) == 12, 40, "sample alerts")
        before = firing_rules(d)
    # what the log holds after the rotation: O1002's events, the newest line (O1099 created)
    # and a newer one, which carries event time on past where the first run had read
    kept = ('"order_id": "O1002"', '"order_id": "O1099"')
    lines = SAMPLE.read_text().splitlines()
    newer = _line(type="order", ts="2026-11-14T00:10:00+08:00", order_id="N1", status="completed")
    events.write_text("".join(f"{x}\n" for x in lines if any(k in x for k in kept)) + newer)
    still = {(rule, oid) for rule, oid in before if oid == "O1002"}
    assert still and len(still) < len(before)
    with daemon(tmp_path, sample_config(events), name="second", state=state, args=args) as d:
        wait_for(lambda: firing_rules(d) == still, 40, "the others ended")
        time.sleep(1)
        assert firing_rules(d) == still
    console = d.console()
    assert "FIRING" not in console, console
    assert console.count("RESOLVED") == len(before) - len(still)
    assert console.count("not raised again since orderwatch restarted") == len(before) - len(still)
    assert '"count": 12, "event": "alerts firing before this start' in d.logs()


def test_sighup_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """It killed it at once, without a clean shutdown (a closed terminal sends it)."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    with daemon(tmp_path, sample_config(events)) as d:
        wait_for(lambda: "orderwatch_dataflow_running 1.0" in d.get("/metrics")[1], 20, "flow")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "sighup_ignored" in d.logs(), 10, "the warning")
        assert d.proc.poll() is None and d.get("/healthz")[0] == 200
        assert d.stop() == 0


def test_the_log_tells_of_rejected_input_and_of_notifiers_it_does_not_run(tmp_path: Path) -> None:
    """CONTRACT §1: bad input "is logged at a rate-limited level" (nothing logged it), and a
    configured notifier that this build does not run was silent until an alert never came."""
    events = tmp_path / "events.jsonl"
    events.write_text("not json\n" * 50 + '{"type":"order","ts":"2026-11-11T00:00:00"}\n')
    cfg = {
        **sample_config(events),
        "notifiers": [{"kind": "webhook", "url": "http://127.0.0.1:9/hook?key=s3cr3t-KEY-7"}],
    }
    with daemon(tmp_path, cfg) as d:
        wait_for(lambda: "missing_field" in d.logs(), 20, "the rejections logged")
        assert d.stop() == 0
    logs = [json.loads(line) for line in d.logs().splitlines() if line.startswith("{")]
    rejected = [e for e in logs if e["event"].startswith("input rejected")]
    assert sorted(e["reason"] for e in rejected) == ["malformed_json", "missing_field"]
    assert {e["position"] for e in rejected} == {"1", "51"}
    (unbuilt,) = [e for e in logs if e["event"].startswith("configured but not run")]
    assert unbuilt["notifiers"] == 1 and unbuilt["level"] == "warning"
    assert {e["level"] for e in rejected} == {"warning"}
    assert "s3cr3t-KEY-7" not in d.logs()


def test_an_oversized_request_header_is_refused_without_logging_it(tmp_path: Path) -> None:
    """aiohttp logged the header's bytes at error level: a client's token in the log."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    with daemon(tmp_path, sample_config(events)) as d:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        conn.putrequest("GET", "/v1/alerts")
        conn.putheader("Authorization", "Bearer s3cr3t-TOKEN-42" + "A" * 9000)
        conn.endheaders()
        assert conn.getresponse().status == 400
        conn.close()
        wait_for(lambda: "bad HTTP request refused" in d.logs(), 10, "the warning")
        assert d.get("/healthz")[0] == 200
    assert "s3cr3t-TOKEN-42" not in d.logs()


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    """Both used to run, each announcing part of the alerts and writing every dead letter."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    state = tmp_path / "state"
    with daemon(tmp_path, sample_config(events), state=state) as d:
        cfg = {**sample_config(events), "state": {"dir": str(state)}}
        cfg["http"] = {"listen": f"127.0.0.1:{d.port + 50}"}
        second = run_once(tmp_path, cfg, "second")
        assert second.returncode == 1
        assert f"is in use by another orderwatch (pid {d.proc.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        assert d.get("/healthz")[0] == 200


@pytest.mark.parametrize("problem", ["not a directory", "not a database"])
def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path, problem: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    state = tmp_path / "state"
    if problem == "not a directory":
        state.write_text("a file")
    else:
        state.mkdir()
        (state / "alerts.db").write_bytes(b"garbage" * 1000)
    cfg = {**sample_config(events), "state": {"dir": str(state)}}
    done = run_once(tmp_path, cfg, "bad-state")
    assert done.returncode == 1
    assert str(state) in done.stderr and "Traceback" not in done.stderr
    assert ("not a database" if problem == "not a database" else "cannot use state.dir") in (
        done.stderr
    )


def test_tailed_file_rotated_by_logrotate_keeps_being_read(tmp_path: Path) -> None:
    """Rename + re-create (logrotate's default): the alert raised from the old file resolves
    from an event in the new one, and orders first seen there are tracked."""
    events = tmp_path / "live.jsonl"
    events.write_text("")
    cfg = _tailed(
        events, rules={"stuck": [{"name": "paid_2s", "statuses": ["paid"], "max_dwell": "2s"}]}
    )
    with daemon(tmp_path, cfg) as d:
        with events.open("a") as f:
            f.write(_line(type="order", ts=_now_ms(), order_id="R1", status="paid"))
        wait_for(lambda: firing_rules(d) == {("paid_2s", "R1")}, 30, "alert from the old file")
        events.rename(tmp_path / "live.jsonl.1")
        events.write_text(
            _line(type="order", ts=_now_ms(), order_id="R1", status="allocated")
            + _line(type="order", ts=_now_ms(), order_id="R2", status="created")
        )
        wait_for(lambda: d.get("/v1/orders/R2")[0] == 200, 20, "an order from the new file")
        wait_for(lambda: firing_rules(d) == set(), 20, "resolution from the new file")
    assert "input file rotated" in d.logs()


def test_a_tailed_file_deleted_and_not_re_created_makes_the_daemon_unready(
    tmp_path: Path,
) -> None:
    """/readyz stayed 200 with the followed file gone for good: nothing was being read. It
    names the source and the path while the file is missing, and is 200 again once a new
    file at the path is being read."""
    events = tmp_path / "live.jsonl"
    events.write_text(_line(type="order", ts=_now_ms(), order_id="G1", status="paid"))
    cfg = _tailed(events)
    with daemon(tmp_path, cfg) as d:
        wait_for(lambda: d.get("/v1/orders/G1")[0] == 200, 20, "the first file read")
        events.unlink()
        _, body = wait_for(
            lambda: (r := d.get("/readyz"))[0] == 503 and r, 10, "readyz to say the file is gone"
        )
        gone = f"sources[0]: {events} is gone (deleted or moved, not re-created)"
        assert body["missing"] == [gone]
        assert body["error"] == f"not ready: {gone}"
        assert _metric(d, "orderwatch_sources_connected") == 0
        assert d.get("/healthz")[0] == 200  # alive all the same: it waits for the file
        events.write_text(_line(type="order", ts=_now_ms(), order_id="G2", status="paid"))
        wait_for(lambda: d.get("/v1/orders/G2")[0] == 200, 20, "the re-created file read")
        assert d.get("/readyz") == (200, {"status": "ready"})
        assert _metric(d, "orderwatch_sources_connected") == 1
        assert d.stop() == 0
    assert "input file not readable at its path" in d.logs()
    assert "input file readable at its path again" in d.logs()


def test_sigterm_leaves_a_clean_state_and_a_restart_repeats_nothing(tmp_path: Path) -> None:
    """SIGTERM exits 0, state is consistent; the same input after a restart re-announces nothing."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    cfg = sample_config(events)
    with daemon(tmp_path, cfg, name="first") as d:
        wait_for(lambda: len(firing_rules(d)) >= 10, 30, "alerts")
        first = firing_rules(d)
        assert d.stop() == 0
    state = d.state
    assert sorted(p.name for p in state.iterdir()) == [
        "alerts.db",
        "dead-letters.jsonl",
        "orderwatch-0.lock",
    ]
    with sqlite3.connect(state / "alerts.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    dead = [json.loads(line) for line in (state / "dead-letters.jsonl").read_text().splitlines()]
    assert sorted(x["reason"] for x in dead) == [
        "malformed_json",
        "naive_timestamp",
        "unknown_status",
    ]
    announced = d.console().count("FIRING")
    assert announced >= 10
    assert '{"clean": true, "why": "stop asked", "event": "stopped"' in d.logs()

    with daemon(tmp_path, cfg, name="second", state=state) as d2:
        # the last run's dead letters are on their orders (indexed at start: the log line below)
        status, err = d2.get("/v1/orders/O1011")
        assert status == 404 and err["rejected_count"] == 2, err
        wait_for(lambda: firing_rules(d2) == first, 30, "same alerts after restart")
        time.sleep(1)
        assert firing_rules(d2) == first  # each raised again: none ended as unconfirmed
        # the input read again rejects the same lines: not counted twice
        assert d2.get("/v1/orders/O1011")[1]["rejected_count"] == 2
    assert "FIRING" not in d2.console() and "RESOLVED" not in d2.console(), d2.console()
    indexed = '"count": 3, "event": "rejected inputs of the last run indexed for their orders"'
    assert indexed in d2.logs()


@pytest.mark.integration
def test_real_prometheus_scrapes_the_daemon(tmp_path: Path) -> None:
    """A real Prometheus scrapes /metrics and can compute what the dashboards show."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    with (
        daemon(tmp_path, sample_config(events)) as d,
        prometheus(tmp_path, [f"127.0.0.1:{d.port}"]) as prom,
    ):
        wait_for(lambda: prom_query(prom, 'up{job="orderwatch"} == 1'), 60, "scrape up")
        total = wait_for(lambda: prom_query(prom, "sum(orderwatch_events_total)"), 30, "events")
        assert float(total[0]["value"][1]) == 68
        gaps = wait_for(
            lambda: prom_query(prom, 'orderwatch_gaps_open{rule="paid_without_wms"}'), 30, "gaps"
        )
        assert float(gaps[0]["value"][1]) == 1
        by_status = prom_query(prom, "sum by (status) (orderwatch_orders)")
        assert {r["metric"]["status"] for r in by_status} >= {"paid", "created", "completed"}


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each child process of `pid` (Linux /proc)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        (int(k), Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        for k in kids
    ]


@pytest.mark.parametrize("how", ["sigterm-to-one-child", "ctrl-c-to-the-terminal-group"])
def test_a_stop_request_stops_a_local_cluster_cleanly(tmp_path: Path, how: str) -> None:
    """`run --processes 2` on a followed file. A SIGTERM that reaches one child alone (`kill`
    of the pid on a port) stopped its input only: the cluster ran on, and a stop of the parent
    then hung. A Ctrl-C reaches the terminal's whole process group (the children now have
    their own, so each gets it once, from the parent). Both stop the whole cluster: exit 0,
    no traceback."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    cfg = {
        **sample_config(events),
        "sources": [{"kind": "file", "path": str(events), "follow": True}],
    }
    with daemon(tmp_path, cfg, args=("--processes", "2"), new_session=True) as d:
        wait_for(lambda: len(firing_rules(d)) == 12, 40, "the cluster running")
        kids = _children(d.proc.pid)
        assert len(kids) == 2, kids
        # process 1 ready too (its signal handlers are in place by then): it serves port + 1
        peer = f"http://127.0.0.1:{d.port + 1}/readyz"
        wait_for(lambda: http_get(peer)[0] == 200, 30, "process 1 ready")
        try:
            if how == "sigterm-to-one-child":
                (one,) = [k for k, cmd in kids if "--process-id 1" in cmd]
                os.kill(one, signal.SIGTERM)
            else:
                os.killpg(d.proc.pid, signal.SIGINT)
            assert d.proc.wait(timeout=30) == 0
        finally:  # a hung cluster's children outlive the parent the harness kills
            for pid, _ in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in d.logs() and "KeyboardInterrupt" not in d.logs()


def _exited(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_local_cluster_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    """`kill -9` of the parent (or the OOM killer) left its children running, holding the
    state lock and their ports. They now ask Linux for a SIGTERM when it dies, and stop."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    cfg = {"sources": [{"kind": "file", "path": str(events), "follow": True}]}
    with daemon(tmp_path, cfg, args=("--processes", "2"), new_session=True) as d:
        kids = [pid for pid, _ in _children(d.proc.pid)]
        assert len(kids) == 2, kids
        wait_for(lambda: http_get(f"http://127.0.0.1:{d.port + 1}/readyz")[0] == 200, 30, "ready")
        try:
            d.proc.kill()
            d.proc.wait(10)

            def gone() -> bool:  # exited: no /proc entry, or a zombie left for init to reap
                return all(_exited(pid) for pid in kids)

            wait_for(gone, 30, "the children stopped")
        finally:
            for pid in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert d.logs().count('"event": "stopping"') == 2  # each stopped as told, not killed


def test_two_process_daemon_answers_for_every_order(tmp_path: Path) -> None:
    """`run --processes 2`: process 0 serves all alerts and every order's timeline."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    with daemon(tmp_path, sample_config(events), args=("--processes", "2")) as d:
        seen: set[tuple[str, str]] = set()

        def all_fired() -> bool:
            seen.clear()
            seen.update(firing_rules(d))
            return len(seen) == 12

        try:
            wait_for(all_fired, 40, "all sample alerts")
        except AssertionError as exc:  # which ones came (and so which shard/process stalled)
            raise AssertionError(f"{exc}; firing: {sorted(seen)}") from None
        for oid in [f"O10{i:02d}" for i in range(2, 11)]:  # O1001 completed: forgotten
            status, body = d.get(f"/v1/orders/{oid}")
            assert status == 200, (oid, body)
            assert body["order_id"] == oid
        _, o1002 = d.get("/v1/orders/O1002")
        assert {a["labels"]["rule"] for a in o1002["alerts"]} == {
            "paid_without_wms",
            "paid_not_allocated",
            "paid_not_shipped",
        }
        assert d.get("/v1/orders/NOPE")[0] == 404
        # process 0 writes the dead letters: it adds each order's to the timeline, wherever
        # the order's shard runs, and to the 404 of an order only rejected inputs named
        oids = [f"O10{i:02d}" for i in range(2, 11)]
        with events.open("a") as f:
            for oid in oids:
                f.write(_line(type="order", ts="2026-11-11T02:00:00", order_id=oid, status="x"))

        def rejected(oid: str) -> int:
            return int(d.get(f"/v1/orders/{oid}")[1]["rejected_count"])

        wait_for(lambda: all(rejected(oid) == 1 for oid in oids), 30, "rejections shown")
        status, body = d.get("/v1/orders/O1011")
        assert status == 404 and body["rejected_count"] == 2
        p1 = f"http://127.0.0.1:{d.port + 1}"
        other = wait_for(lambda: http_get(f"{p1}/metrics"), 30, "p1")
        assert other[0] == 200 and "orderwatch_orders_tracked" in other[1]
        # process 1 holds no alert store: its /v1 answers are process 0's
        status, body = http_get(f"{p1}/v1/alerts")
        assert status == 200
        assert {(a["labels"]["rule"], a["labels"]["order_id"]) for a in body["alerts"]} == seen
        status, body = http_get(f"{p1}/v1/orders/O1002")
        assert status == 200 and len(body["alerts"]) == 3 and body["rejected_count"] == 1
        status, body = http_get(f"{p1}/v1/orders/stuck?rule=nope")
        assert status == 400 and body["parameter"] == "rule"


def _metric(d: Any, name: str) -> float:
    _, text = d.get("/metrics")
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


def _samples(d: Any, name: str) -> dict[str, float]:
    """`name`'s samples by their `reason`/`type` label."""
    _, text = d.get("/metrics")
    return {
        s.labels.get("reason") or s.labels.get("type", ""): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


def test_simulator_with_default_settings_is_not_dead_lettered(tmp_path: Path) -> None:
    """Its clock runs ahead of the wall's by design (max_future does not apply), and the
    channel status names it speaks need no status_map. Only its naive_timestamp fault is
    rejected, as that scenario intends."""
    cfg = {"sources": [{"kind": "simulator", "rate": 400, "speed": 1800}]}
    with daemon(tmp_path, cfg) as d:
        # 3 wall seconds = 90 simulated minutes: far past max_future's 10 minutes
        wait_for(lambda: sum(_samples(d, "orderwatch_events_total").values()) > 1000, 30, "events")
        time.sleep(1)
        rejected = _samples(d, "orderwatch_events_rejected_total")
    assert set(rejected) <= {"naive_timestamp"}, rejected


def _first_run_with_recovery(tmp_path: Path) -> tuple[Path, dict[str, Any], Path]:
    """The sample run once with state.recovery (as `first.yaml`), stopped after a snapshot."""
    events = tmp_path / "events.jsonl"
    shutil.copy(SAMPLE, events)
    cfg = {**sample_config(events), "state": {"recovery": True, "snapshot_interval": "1s"}}
    state = tmp_path / "state"
    cfg["state"]["dir"] = str(state)
    with daemon(tmp_path, cfg, name="first", state=state) as d:
        wait_for(lambda: len(firing_rules(d)) == 12, 30, "sample alerts")
        assert _metric(d, "orderwatch_input_lines_total") == 71
        time.sleep(2.5)  # let an epoch close so a snapshot is written
        assert d.stop() == 0
    assert (state / "recovery").is_dir()
    return events, cfg, state


def test_recovery_resumes_from_the_snapshot_after_a_restart(tmp_path: Path) -> None:
    """With state.recovery the restarted daemon continues where it stopped, state included."""
    events, cfg, state = _first_run_with_recovery(tmp_path)
    with events.open("a") as f:  # O1002 finally reaches the warehouse
        f.write(
            json.dumps(
                {
                    "type": "wms",
                    "ts": "2026-11-13T10:00:00+08:00",
                    "order_id": "O1002",
                    "action": "outbound_created",
                }
            )
            + "\n"
        )
    with daemon(tmp_path, cfg, name="second", state=state) as d2:
        wait_for(lambda: ("paid_without_wms", "O1002") not in firing_rules(d2), 30, "resolution")
        # it read only the new line: the file offset came back from the snapshot
        assert _metric(d2, "orderwatch_input_lines_total") == 1
        status, timeline = d2.get("/v1/orders/O1002")  # and the order state with it
        assert status == 200
        assert [e["type"] for e in timeline["events"]] == ["order", "payment", "order", "wms"]
    assert "RESOLVED critical paid_without_wms O1002" in d2.console()
    assert "FIRING" not in d2.console()  # nothing announced twice


def test_a_resumed_daemon_serves_its_orders_before_any_new_input(tmp_path: Path) -> None:
    """A shard was served (API, metrics) only once a batch reached it, so after a restart on
    a quiet input every order was 404 "not served by this process" and the metrics said 0."""
    _, cfg, state = _first_run_with_recovery(tmp_path)
    with daemon(tmp_path, cfg, name="second", state=state) as d2:
        wait_for(lambda: d2.get("/v1/orders/O1002")[0] == 200, 10, "the order served")
        assert _metric(d2, "orderwatch_orders_tracked") >= 9  # the healthy one may be gone
        assert _metric(d2, "orderwatch_input_lines_total") == 0  # nothing new was read


def test_a_resumed_daemon_on_a_quiet_input_moves_its_watermark_on_at_once(tmp_path: Path) -> None:
    """The resumed watermark started its quiet spell at the restart: it stood still for as long
    as the input had been quiet before the stop (after a quiet night, hours of late alerts)."""
    events = tmp_path / "live.jsonl"
    events.write_text(_line(type="order", ts=_now_ms(), order_id="Q1", status="paid"))
    state = tmp_path / "state"
    cfg = _tailed(
        events,
        rules={"stuck": [{"name": "paid_1h", "statuses": ["paid"], "max_dwell": "1h"}]},
        state={"dir": str(state), "recovery": True, "snapshot_interval": "1s"},
    )
    with daemon(tmp_path, cfg, name="first", state=state) as d:
        wait_for(lambda: d.get("/v1/orders/Q1")[0] == 200, 20, "order read")
        time.sleep(15)  # quiet: the watermark follows the wall clock
        before = _metric(d, "orderwatch_watermark_timestamp_seconds")
        assert d.stop() == 0
    with daemon(tmp_path, cfg, name="second", state=state) as d2:
        wait_for(lambda: d2.get("/v1/orders/Q1")[0] == 200, 20, "order resumed")
        first = _metric(d2, "orderwatch_watermark_timestamp_seconds")
        wait_for(
            lambda: _metric(d2, "orderwatch_watermark_timestamp_seconds") > max(first, before),
            10,
            "the watermark moving on (it stood for the 15 quiet seconds before the stop)",
        )


def test_a_recovery_store_of_another_format_stops_the_start_with_a_clear_error(
    tmp_path: Path,
) -> None:
    """Snapshots written by another state layout are refused before the daemon starts."""
    _, _, state = _first_run_with_recovery(tmp_path)
    # Rewrite the shard snapshots the way orderwatch wrote them before they had a header.
    rewritten = 0
    for part in (state / "recovery").glob("part-*.sqlite3"):
        with sqlite3.connect(part) as db:
            rows = db.execute(
                "SELECT rowid, ser_change FROM snaps WHERE step_id = ? AND ser_change IS NOT NULL",
                (SHARD_STEP,),
            ).fetchall()
            for rowid, ser in rows:
                blob = pickle.loads(ser)
                old = pickle.dumps(pickle.loads(blob[snapshots._settings(blob)[1] :]))
                db.execute(
                    "UPDATE snaps SET ser_change = ? WHERE rowid = ?", (pickle.dumps(old), rowid)
                )
                rewritten += 1
    assert rewritten > 0
    first_run = yaml.safe_load((tmp_path / "first.yaml").read_text())  # as the first run had it
    said = _refused_start(tmp_path, first_run)
    assert "recovery snapshot is format 1" in said


def test_changed_rules_stop_a_resume_with_a_clear_error(tmp_path: Path) -> None:
    """A shard's rules are part of its snapshot: a changed threshold would silently not
    apply after a resume, so the start is refused, naming what changed."""
    _, first, _ = _first_run_with_recovery(tmp_path)
    cfg = copy.deepcopy(first)  # not the shared CONTRACT_RULES
    cfg["rules"]["stuck"][0]["max_dwell"] = "17m"
    said = _refused_start(tmp_path, cfg)
    assert "recovery snapshot was taken with other settings (rules)" in said


def _refused_start(tmp_path: Path, config: dict[str, Any]) -> str:
    """`orderwatch run` refusing the recovery store: exit 2, `cannot_resume`; what it said."""
    done = run_once(tmp_path, config, "refused")
    assert done.returncode == 2
    said = done.stdout + done.stderr
    assert "cannot_resume" in said and "move <state.dir>/recovery aside" in said
    assert "panicked" not in said and "Traceback" not in said
    return said


def test_alerts_a_busy_store_holds_back_survive_a_kill(tmp_path: Path) -> None:
    """With state.recovery, alert changes the store has not taken yet (another process holds
    its lock) are not covered by a snapshot: after a SIGKILL the restarted daemon makes them
    again. The dataflow used to hand them to an in-memory queue and go on, so the snapshots
    that followed covered them, and a kill lost them for good."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"")
    cfg = {**sample_config(events), "state": {"recovery": True, "snapshot_interval": "200ms"}}
    state = tmp_path / "state"
    cfg["state"]["dir"] = str(state)
    replayed = [
        json.loads(x) for x in Path("examples/sample-alerts.jsonl").read_text().splitlines()
    ]
    still_firing: dict[tuple[str, str], bool] = {}
    for a in replayed:
        if a["endsAt"] is None or a["status"] == "resolved":  # not a one-shot anomaly
            still_firing[(a["labels"]["rule"], a["labels"]["order_id"])] = a["status"] == "firing"
    expected = {key for key, firing in still_firing.items() if firing}
    assert len(expected) == 12
    with daemon(tmp_path, cfg, name="first", state=state) as d:
        holder = sqlite3.connect(state / "alerts.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a backup, a sqlite3 shell …
        try:
            shutil.copy(SAMPLE, events)
            wait_for(lambda: _metric(d, "orderwatch_alerts_waiting") > 0, 30, "alerts waiting")
            time.sleep(2)  # ten snapshot intervals
            d.proc.kill()
            d.proc.wait(10)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    with daemon(tmp_path, cfg, name="second", state=state) as d2:
        wait_for(lambda: firing_rules(d2) == expected, 30, "every alert after the restart")


def test_alerts_stored_but_never_printed_are_printed_at_the_next_start(tmp_path: Path) -> None:
    """The process died between storing a change and printing it: the next start prints it
    (once: a start after that does not)."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    state = tmp_path / "state"
    state.mkdir()
    labels = {
        "alertname": "OrderGap",
        "rule": "paid_without_wms",
        "severity": "critical",
        "order_id": "LOST1",
    }
    notes = {"summary": "Order LOST1 paid 10m ago but the warehouse has no outbound order"}
    stored = AlertChange(FIRING, labels, notes, 1_762_790_400_000, None)
    with AlertStore(state / DB_NAME) as store:
        assert store.apply([stored]) == [stored]  # stored; never announced
    with daemon(tmp_path, sample_config(events), name="first", state=state) as d:
        wait_for(lambda: "LOST1" in d.console(), 20, "the stored alert printed")
        assert "FIRING" in d.console() and notes["summary"] in d.console()
        assert "announcing alert changes stored before the last stop" in d.logs()
        _, body = d.get("/v1/alerts")
        assert [a["labels"]["order_id"] for a in body["alerts"]] == ["LOST1"]
    with daemon(tmp_path, sample_config(events), name="second", state=state) as d:
        wait_for(lambda: "orderwatch_dataflow_running 1.0" in d.get("/metrics")[1], 20, "flow")
        assert "LOST1" not in d.console()


def test_the_demo_keeps_its_alerts_in_memory_so_a_restart_shows_only_its_new_traffic(
    tmp_path: Path,
) -> None:
    """The demo's simulator makes new traffic from the current time at every start, reusing
    the last run's order ids. With its alerts on disk, a restart took the new alerts for ones
    announced before (superseded without a word, or dropped as too old once the first run's
    1,800× clock had run weeks ahead) and the last run's were left firing, with nothing to end
    them. Its console notifier is the console: no warning that it is not built."""
    from importlib.resources import files

    demo = yaml.safe_load(files("orderwatch").joinpath("defaults/demo.yaml").read_text("utf-8"))
    del demo["http"]  # the harness's free port, not 8080
    state = tmp_path / "demo-state"
    cfg = {**demo, "state": {**demo["state"], "dir": str(state)}}
    for run, enough in (("first", 150), ("second", 20)):  # the first runs further ahead
        with daemon(tmp_path, cfg, name=run, state=state) as d:
            wait_for(lambda d=d, n=enough: d.console().count("FIRING") >= n, 90, "alerts")  # type: ignore[misc]
            firing = d.get("/v1/alerts")[1]["alerts"]
            watermark = _metric(d, "orderwatch_watermark_timestamp_seconds")
            assert d.stop() == 0
        # this run's traffic only: each alert fired once the watermark passed its start, none
        # is the last run's (its clock ran further), left firing with nothing to end it
        starts = [datetime.fromisoformat(a["startsAt"]).timestamp() for a in firing]
        assert starts and max(starts) < watermark
        assert not (state / DB_NAME).exists()
        assert "configured but not run" not in d.logs()


def test_a_file_read_once_says_so_at_start_and_why_it_stopped(tmp_path: Path) -> None:
    """`follow` defaults to false: `run` reads the file and ends by itself. It used to log only
    `stopped`, which a crash-looping service cannot tell from a crash."""
    events = tmp_path / "once.jsonl"
    events.write_text(_line(type="order", ts=_now_ms(), order_id="O1", status="created"))
    tailed = tmp_path / "tailed.jsonl"
    tailed.write_text("")
    sources = [
        {"kind": "file", "path": str(events), "name": "orders-once"},
        {"kind": "file", "path": str(tailed), "follow": True},
    ]
    done = run_once(
        tmp_path, {"sources": sources[:1], "http": {"listen": f"127.0.0.1:{free_port()}"}}
    )
    assert done.returncode == 0, done.stderr
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (warning,) = [x for x in logs if x["event"].startswith("read once (follow: false)")]
    assert warning["sources"] == ["orders-once"] and warning["level"] == "warning"
    assert [x.get("why") for x in logs if x["event"] == "stopped"] == ["input ended"]
    with daemon(tmp_path, {"sources": sources[1:]}) as d:
        wait_for(lambda: "started" in d.logs(), 20, "start")
    assert "read once" not in d.logs()
