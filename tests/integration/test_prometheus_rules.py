"""The Prometheus alerting rules shipped in deploy/prometheus, checked by real promtool and a real
Prometheus evaluating them on a real daemon's metrics."""

from __future__ import annotations

import re
import subprocess
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from orderwatch.metrics import SPECS
from tests.integration.harness import daemon, http_get, prometheus, require, wait_for
from tests.integration.test_daemon import sample_config

RULES = Path("deploy/prometheus/orderwatch-alerts.yml")
BEHAVIOUR = Path("tests/prometheus/orderwatch-alerts.test.yml")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [require("promtool"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_rules_file_is_valid_for_promtool() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_example_prometheus_config_loads_the_rules_and_names_the_job_they_select() -> None:
    config = Path("deploy/prometheus/prometheus.yml")
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout
    jobs = [job["job_name"] for job in yaml.safe_load(config.read_text())["scrape_configs"]]
    selected = {m for r in rules() for m in re.findall(r'up\{job="(\w+)"\}', r["expr"])}
    assert selected == {"orderwatch"} and selected <= set(jobs)


def test_each_rule_fires_when_meant_and_not_otherwise(tmp_path: Path) -> None:
    """`promtool test rules` on the behaviour file, against the rules without annotations
    (their wording is checked below), and every rule is shown firing at least once there."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    (tmp_path / BEHAVIOUR.name).write_text(BEHAVIOUR.read_text())
    done = promtool("test", "rules", BEHAVIOUR.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    cases = yaml.safe_load(BEHAVIOUR.read_text())["tests"]
    shown = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert shown == {rule["alert"] for rule in rules()}


def test_summaries_say_what_fired_with_its_figures(tmp_path: Path) -> None:
    """The templated summaries, rendered by promtool from the shipped file."""
    by_name = {rule["alert"]: rule for rule in rules()}
    payments = 'job="orderwatch", instance="a:8080", source="payments"'
    series = [
        (f'orderwatch_events_total{{{payments}, type="payment"}}', "0+6000x20"),
        (f'orderwatch_events_rejected_total{{{payments}, reason="naive_timestamp"}}', "0+120x20"),
        ('orderwatch_watermark_lag_seconds{job="orderwatch", instance="a:8080"}', "5400x20"),
    ]
    expected = {
        # 2/s of 102/s
        "OrderwatchInputRejected": (
            {"source": "payments", "reason": "naive_timestamp", "job": "orderwatch"},
            "1.961% of source payments is rejected as naive_timestamp",
        ),
        "OrderwatchWatermarkBehind": (
            {"instance": "a:8080", "job": "orderwatch"},
            "orderwatch a:8080 is 1h 30m 0s behind the wall clock in event time",
        ),
    }
    tests = [
        {
            "eval_time": "10m",
            "alertname": name,
            "exp_alerts": [
                {
                    "exp_labels": {**labels, **by_name[name]["labels"]},
                    "exp_annotations": {
                        "summary": summary,
                        "description": by_name[name]["annotations"]["description"],
                    },
                }
            ],
        }
        for name, (labels, summary) in expected.items()
    ]
    case = {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": tests,
    }
    spec = {"rule_files": [str(RULES.resolve())], "tests": [case]}
    (tmp_path / "wording.test.yml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    done = promtool("test", "rules", "wording.test.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_read_only_metrics_and_labels_orderwatch_serves() -> None:
    """A renamed metric or label would leave a rule silently empty."""
    suffixes = {"histogram": ("_bucket", "_count", "_sum")}
    served: dict[str, set[str]] = {}
    for spec in SPECS.values():
        labels = set(spec.labels) | {"job", "instance"}
        for suffix in suffixes.get(spec.kind, ("",)):
            served[spec.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    served["up"] = {"job", "instance"}
    for rule in rules():
        expr = rule["expr"]
        names = set(re.findall(r"\b(orderwatch_\w+|up)\b", expr))
        assert names, rule["alert"]
        assert names <= set(served), (rule["alert"], names - set(served))
        known = set.union(*(served[n] for n in names))
        grouped = {
            label.strip()
            for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
            for label in group.split(",")
            if label.strip()
        }
        matched = set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!=|=)", expr)) - {"__name__"}
        assert grouped | matched <= known, (rule["alert"], (grouped | matched) - known)


def _appender(path: Path, stop: threading.Event) -> None:
    """Keep a followed file growing: per round one good order event and three callbacks with
    naive timestamps (the time-zone mistake of seed 004)."""
    at = datetime.now().astimezone()
    n = 0
    with path.open("a") as f:
        while not stop.is_set():
            n += 1
            ts = (at + timedelta(seconds=n)).isoformat(timespec="milliseconds")
            f.write(
                f'{{"type":"order","event_id":"e{n}","ts":"{ts}","order_id":"R{n}",'
                f'"status":"created","amount":"10.00","channel":"jd","source":"oms"}}\n'
            )
            naive = (at + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S")
            for k in range(3):
                f.write(
                    f'{{"type":"payment","event_id":"p{n}-{k}","ts":"{naive}",'
                    f'"order_id":"R{n}","pay_no":"P{n}-{k}","status":"success","amount":"10.00"}}\n'
                )
            f.flush()
            stop.wait(0.3)


def test_real_prometheus_evaluates_the_rules_on_the_daemon(tmp_path: Path) -> None:
    """Every rule evaluates without error on real series, and a source that is mostly rejected
    raises OrderwatchInputRejectedMostly (pending: its `for` is minutes)."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    config = sample_config(events)
    config["sources"][0]["name"] = "checkout"
    stop = threading.Event()
    writer = threading.Thread(target=_appender, args=(events, stop), daemon=True)
    with (
        daemon(tmp_path, config) as d,
        prometheus(tmp_path, [f"127.0.0.1:{d.port}"], rules=RULES.resolve()) as prom,
    ):
        writer.start()
        try:

            def pending() -> list[dict[str, Any]]:
                status, body = http_get(prom + "/api/v1/alerts")
                assert status == 200, body
                return [
                    a
                    for a in body["data"]["alerts"]
                    if a["labels"]["alertname"] == "OrderwatchInputRejectedMostly"
                ]

            alerts = wait_for(pending, 60, "OrderwatchInputRejectedMostly pending")
        finally:
            stop.set()
            writer.join()
        assert [a["labels"]["source"] for a in alerts] == ["checkout"]
        assert alerts[0]["labels"]["reason"] == "naive_timestamp"
        assert alerts[0]["state"] == "pending"
        assert 0.6 < float(alerts[0]["value"]) < 0.9  # three of every four lines

        status, body = http_get(prom + "/api/v1/rules")
        assert status == 200, body
        evaluated = [r for g in body["data"]["groups"] for r in g["rules"]]
        assert {r["name"] for r in evaluated} == {rule["alert"] for rule in rules()}
        assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []
