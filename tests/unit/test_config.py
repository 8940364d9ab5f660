"""A bad config fails at load, before any port opens, listing every error with its key's path."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from orderwatch.cli import main
from orderwatch.config import ConfigError, load_config, validate_config
from orderwatch.simulate import SCENARIOS
from tests.integration.harness import free_port, run_once


def errors_of(doc: dict[str, Any], env: dict[str, str] | None = None, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_config(doc, env={} if env is None else env, **kw)
    return err.value.errors


def simulator(**scenarios: Any) -> dict[str, Any]:
    return {"sources": [{"kind": "simulator", "scenarios": scenarios}]}


# --- simulator scenarios -----------------------------------------------------------------------


def test_every_simulator_scenario_is_accepted() -> None:
    """The config takes exactly the names `orderwatch simulate --scenario` takes."""
    cfg = validate_config(simulator(**{name: 0.01 for name in SCENARIOS}))
    assert list(cfg.sources[0].scenarios) == list(SCENARIOS)  # type: ignore[union-attr]


def test_unknown_scenario_is_an_error_at_its_key() -> None:
    """`scenarios: {nope: 0.1}` used to pass and crash the bytewax source at run time."""
    (line,) = errors_of(simulator(nope=0.1, wms_push_lost=0.1))
    assert line.startswith("sources[0].scenarios.nope: ")
    assert "unknown scenario 'nope'" in line and "wms_push_lost" in line


@pytest.mark.parametrize("share", [2, -0.1, float("nan")])
def test_share_out_of_range_is_an_error_at_its_key(share: float) -> None:
    """A share is 0..1; the error names the share's path and the allowed range."""
    (line,) = errors_of(simulator(wms_push_lost=share, callback_storm=0.1))
    assert line.startswith("sources[0].scenarios.wms_push_lost: ")
    assert "within 0..1" in line


def test_per_order_shares_may_not_add_up_to_more_than_one() -> None:
    """Each order gets at most one fault; window faults do not count."""
    (line,) = errors_of(simulator(double_ship=0.7, status_jump=0.6, callback_storm=0.9))
    assert line.startswith("sources[0].scenarios: ") and "1.3" in line
    validate_config(simulator(double_ship=0.5, status_jump=0.5, callback_storm=0.9))


def test_bad_simulator_start_is_an_error() -> None:
    """An unparsable `start` used to crash the bytewax source at run time."""
    doc = {"sources": [{"kind": "simulator", "start": "tomorrow"}]}
    (line,) = errors_of(doc)
    assert line.startswith("sources[0].start: ") and "ISO 8601 time with a UTC offset" in line
    validate_config({"sources": [{"kind": "simulator", "start": "2026-11-11T00:00:00+08:00"}]})


def test_simulator_start_needs_an_offset() -> None:
    """Without one, the start was read in the machine's zone: a migration's classic mistake."""
    doc = {"sources": [{"kind": "simulator", "start": "2026-11-11T00:00:00"}]}
    (line,) = errors_of(doc)
    assert line.startswith("sources[0].start: ") and "UTC offset" in line
    validate_config({"sources": [{"kind": "simulator", "start": "2026-11-10T16:00:00Z"}]})


# --- environment variables ---------------------------------------------------------------------

README_BAD = """\
rules:
  stuck:
    - {name: a, statuses: [paid], max_dwell: 30m, severity: warning}
    - {name: b, statuses: [payed], max_dwell: 2x, severity: critical}
notifiers:
  - {kind: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=${DINGTALK_TOKEN}"}
"""


def test_unset_variable_does_not_hide_the_other_errors() -> None:
    """An unset ${VAR} used to be the only error reported."""
    paths = [e.partition(": ")[0] for e in errors_of(yaml.safe_load(README_BAD))]
    assert paths == ["rules.stuck[1].statuses[0]", "rules.stuck[1].max_dwell", "notifiers[0].url"]


def test_unset_variable_is_not_also_reported_as_a_bad_value() -> None:
    """The "" put in place of an unset variable is not blamed on the user."""
    assert errors_of({"lateness": "${LATE}"}) == ["lateness: environment variable LATE is not set"]


def test_errors_never_show_the_value_of_a_variable() -> None:
    """A value from the environment (maybe a secret) is shown as `${NAME}` in errors."""
    env = {"LISTEN": "s3cr3t-listen", "ZONE": "s3cr3t-zone"}
    text = "\n".join(errors_of({"http": {"listen": "${LISTEN}"}, "timezone": "${ZONE}"}, env))
    assert "s3cr3t" not in text
    assert "http.listen:" in text and "${LISTEN}" in text and "${ZONE}" in text


def test_a_short_variable_value_is_redacted_without_garbling_the_message() -> None:
    """`X=e` made "Value error" read "Valu${X} ${X}rror"; the value alone is still hidden."""
    (line,) = errors_of({"rules": {"fulfilment_sla": "${X}"}}, {"X": "e"})
    assert line.startswith("rules.fulfilment_sla: Value error, invalid duration '${X}'"), line
    assert "'e'" not in line and "expected e.g." in line


# --- file sources ------------------------------------------------------------------------------


@pytest.mark.parametrize("follow", [False, True])
def test_missing_source_file_is_an_error_when_files_are_checked(
    tmp_path: Path, follow: bool
) -> None:
    """`run` and `check-config` check file sources; even `follow` opens the file at start."""
    doc = {"sources": [{"kind": "file", "path": str(tmp_path / "none.jsonl"), "follow": follow}]}
    (line,) = errors_of(doc, for_run=True)
    assert line.startswith("sources[0].path: ") and "file not found" in line
    assert "patterns are not expanded" not in line
    validate_config(doc)  # a replay only uses the rules: its config may name files elsewhere
    (tmp_path / "none.jsonl").write_text("")
    validate_config(doc, for_run=True)


def test_a_glob_is_not_expanded_and_the_error_says_so(tmp_path: Path) -> None:
    (tmp_path / "a1.jsonl").write_text("")
    doc = {"sources": [{"kind": "file", "path": str(tmp_path / "a*.jsonl")}]}
    (line,) = errors_of(doc, for_run=True)
    assert "file not found" in line and "patterns are not expanded" in line


def test_one_file_as_two_sources_is_an_error(tmp_path: Path) -> None:
    """Under two names, or by a link, one file was read twice: every event counted twice."""
    (tmp_path / "events.jsonl").write_text("")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "events.jsonl")
    first = {"kind": "file", "path": str(tmp_path / "events.jsonl"), "name": "a"}
    for path in (tmp_path / "events.jsonl", tmp_path / "." / "link.jsonl"):
        doc = {"sources": [first, {"kind": "file", "path": str(path), "name": "b"}]}
        (line,) = errors_of(doc, for_run=True)
        assert line.startswith("sources[1].path: ") and "the file sources[0] reads" in line
    (tmp_path / "other.jsonl").write_text("")
    other = {"kind": "file", "path": str(tmp_path / "other.jsonl"), "name": "b"}
    validate_config({"sources": [first, other]}, for_run=True)


def test_a_directory_is_not_a_source_file(tmp_path: Path) -> None:
    (line,) = errors_of({"sources": [{"kind": "file", "path": str(tmp_path)}]}, for_run=True)
    assert line.startswith("sources[0].path: ") and "not a readable file" in line


# --- the command line --------------------------------------------------------------------------


def test_check_config_output_is_the_readme_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README "Command line" shows check-config's output for this file; keep it true."""
    monkeypatch.delenv("DINGTALK_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(README_BAD)
    assert main(["check-config", "bad.yaml"]) == 2
    got = capsys.readouterr().err.splitlines()
    readme = (Path(__file__).parents[2] / "README.md").read_text("utf-8")
    block = re.search(r"\$ orderwatch check-config bad.yaml\n(.*?)\n```", readme, re.S)
    assert block is not None
    shown = block.group(1).splitlines()
    assert len(got) == len(shown), got
    for line, example in zip(got, shown, strict=True):
        assert line.startswith(example.rstrip("…").rstrip(" ,'")), (line, example)


def test_check_config_lists_every_error_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad scenario, bad share and a missing file together: `check-config` used to say OK."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "sources:\n"
        "  - {kind: simulator, scenarios: {nope: 0.1, wms_push_lost: 2}}\n"
        f"  - {{kind: file, path: {tmp_path / 'none.jsonl'}}}\n"
    )
    assert main(["check-config", str(path)]) == 2
    paths = [ln.split(": ")[0].strip() for ln in capsys.readouterr().err.splitlines()[1:]]
    assert paths == [
        "sources[0].scenarios.nope",
        "sources[0].scenarios.wms_push_lost",
        "sources[1].path",
    ]


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "simulator", "scenarios": {"nope": 0.1}},
        {"kind": "file", "path": "/nonexistent/orderwatch-test.jsonl"},
    ],
)
def test_run_refuses_a_bad_source_before_opening_its_port(
    tmp_path: Path, source: dict[str, Any]
) -> None:
    """`orderwatch run` exits 2 naming the key; it used to start, then panic in bytewax."""
    cfg = {
        "sources": [source],
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state": {"dir": str(tmp_path / "state")},
    }
    done = run_once(tmp_path, cfg)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "sources[0]." in said and "invalid config" in said
    assert "control_plane_started" not in said
    assert "panicked" not in said and "Traceback" not in said
    assert not (tmp_path / "state").exists()


def test_run_on_a_taken_port_says_so_without_a_traceback(tmp_path: Path) -> None:
    """Exit 1 (a runtime failure), naming the address; it used to print a traceback."""
    events = tmp_path / "e.jsonl"
    events.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        cfg = {
            "sources": [{"kind": "file", "path": str(events), "follow": True}],
            "http": {"listen": listen},
            "state": {"dir": str(tmp_path / "state")},
        }
        done = run_once(tmp_path, cfg)
    assert done.returncode == 1, done.stderr
    assert f"cannot serve HTTP on {listen}" in done.stderr
    assert "Traceback" not in done.stderr


def test_files_are_checked_only_when_asked(tmp_path: Path) -> None:
    """Replay reads its events argument, not `sources`: a config from the server still works."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"kind": "file", "path": "/srv/none.jsonl"}]}))
    cfg = load_config(config)
    assert str(cfg.sources[0].path) == "/srv/none.jsonl"  # type: ignore[union-attr]


def test_check_config_shows_lifecycle_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whoever reads `check-config` sees which transitions no longer count as illegal."""
    monkeypatch.chdir(tmp_path)
    doc = {"lifecycle": {"allow": {"cancelled": ["paid"]}, "forbid": {"paid": ["closed"]}}}
    Path("lc.yaml").write_text(yaml.safe_dump(doc))
    assert main(["check-config", "lc.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "lifecycle also allows: cancelled→paid" in out
    assert "lifecycle also forbids: paid→closed" in out


def test_undeclared_switch_is_listed_with_the_other_errors_at_its_path() -> None:
    """It used to appear only once every other error was fixed, at `(top level)`."""
    breaker = {"name": "pay", "route": "/pay", "when": {"qps_above": 5000}, "switches": ["x", "y"]}
    doc = {"lateness": "soon", "switches": ["x"], "breakers": [breaker]}
    assert [e.split(":")[0] for e in errors_of(doc)] == ["lateness", "breakers[0].switches[1]"]
    assert errors_of({"breakers": [breaker]})[0].startswith("breakers[0].switches[0]: 'x' is not")


def test_a_bad_topic_type_is_one_error_at_its_key() -> None:
    doc = {"sources": [{"kind": "kafka", "brokers": ["b:9092"], "topics": {"t": "ordr"}}]}
    (line,) = errors_of(doc)
    assert line.startswith("sources[0].topics.t: ") and "'mixed'" in line


@pytest.mark.parametrize(
    ("item", "path", "words"),
    [
        ({"notifiers": [{"kind": "wecom", "url": "ftp://x"}]}, "notifiers[0].url", "http://"),
        ({"notifiers": [{"kind": "slack"}]}, "notifiers[0].url", "slack notifier needs"),
        ({"breakers": [{"name": "b", "route": "/pay"}]}, "breakers[0].when", "needs `when`"),
        (
            {"breakers": [{"name": "b", "route": "/p", "when": {"slow_ratio_above": 0.1}}]},
            "breakers[0].when.slow_ms",
            "needs slow_ms",
        ),
        (
            {"sources": [{"kind": "file", "path": "x", "format": "nginx", "type": "order"}]},
            "sources[0].format",
            "access_log events only",
        ),
    ],
)
def test_a_check_on_one_key_names_that_key(item: dict[str, Any], path: str, words: str) -> None:
    """These were reported at the enclosing object (`notifiers[0]`), which hides the key."""
    (line,) = errors_of(item)
    assert line.startswith(f"{path}: ") and words in line, line


def test_duplicate_rule_names_are_listed_with_the_other_errors() -> None:
    """pydantic runs a list's own check only once every item is valid, so a duplicate name
    appeared only after the other errors were fixed."""
    rule = {"name": "a", "statuses": ["paid"], "max_dwell": "1m"}
    doc = {"rules": {"stuck": [{**rule, "max_dwell": "2x"}, rule, rule]}}
    assert [e.split(":")[0] for e in errors_of(doc)] == [
        "rules.stuck[0].max_dwell",
        "rules.stuck[1].name",
        "rules.stuck[2].name",
    ]


def test_a_kafka_source_is_refused_where_the_config_is_to_run() -> None:
    """`run` refused it only after `check-config` had printed it as what would run; a replay,
    which takes only the rules, still accepts the file."""
    doc = {"sources": [{"kind": "kafka", "brokers": ["b:9092"], "topics": {"t": "order"}}]}
    (line,) = errors_of(doc, for_run=True)
    assert line.startswith("sources[0].kind: kafka sources are not available in this build")
    assert validate_config(doc).sources[0].kind == "kafka"


def test_check_config_sets_apart_what_this_build_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Breakers, notifiers and the token are validated but not run: check-config says so
    instead of listing them with what runs."""
    monkeypatch.chdir(tmp_path)
    breaker = {"name": "cb1", "route": "/cb", "when": {"qps_above": 5000}, "switches": ["x"]}
    notifier = {"kind": "wecom", "url": "https://qyapi.example/send?key=SECRET"}
    notifiers = [notifier, {"kind": "console"}]  # the console runs: not listed as unbuilt
    doc = {"switches": ["x"], "breakers": [breaker], "notifiers": notifiers}
    Path("c.yaml").write_text(yaml.safe_dump(doc))
    assert main(["check-config", "c.yaml"]) == 0
    runs, _, unbuilt = capsys.readouterr().out.partition("validated, not run by this build")
    assert "alerts: printed on the console" in runs
    assert "cb1" not in runs and "wecom" not in runs
    assert (
        "breaker cb1: route /cb" in unbuilt and "notifier wecom https://qyapi.example/…" in unbuilt
    )
    assert "SECRET" not in unbuilt
    assert "console" not in unbuilt


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:pw-SECRET@alerts.internal:9000/x", "http://…@alerts.internal:9000/…"),
        ("https://token-SECRET@hooks.example", "https://…@hooks.example"),
        ("https://oapi.example/robot/send?access_token=SECRET", "https://oapi.example/…"),
    ],
)
def test_check_config_shows_no_credentials_of_a_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, shown: str
) -> None:
    """A password in the user part of a URL was printed whole."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"notifiers": [{"kind": "webhook", "url": url}]}))
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"notifier webhook {shown}" in out and "SECRET" not in out


def test_errors_across_keys_never_show_the_value_of_a_variable() -> None:
    """The checks that relate keys quoted the names they compare, unredacted."""
    rule = {"name": "${NAME}", "statuses": ["paid"], "max_dwell": "1m"}
    breaker = {"name": "b", "route": "/p", "when": {"qps_above": 1}, "switches": ["${SW}"]}
    doc = {"rules": {"stuck": [rule, rule]}, "breakers": [breaker]}
    text = "\n".join(errors_of(doc, {"NAME": "name-SECRET", "SW": "switch-SECRET"}))
    assert "SECRET" not in text
    assert "rules.stuck[1].name: duplicate stuck rule name '${NAME}'" in text
    assert "breakers[0].switches[0]: '${SW}' is not listed" in text


@pytest.mark.parametrize(
    "text",
    [
        "notifiers:\n  - kind: wecom\n    url: https://x/send?key=SECRET1: oops\n",
        "http:\n\ttoken: SECRET2\n",
        'notifiers:\n  - {kind: wecom, url: "https://x/?key=SECRET3", url: "https://y"}\n',
        'notifiers:\n  - {kind: wecom, url: "https://x/?key=SECRET4}\n',
    ],
    ids=["colon", "tab", "duplicate", "unclosed"],
)
def test_a_yaml_syntax_error_says_where_without_echoing_the_line(tmp_path: Path, text: str) -> None:
    """PyYAML's message quotes the offending line, which may hold a webhook key written into
    the file: the error gives the line, column and problem only."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (line,) = err.value.errors
    assert "SECRET" not in line and "not valid YAML at line " in line, line


def test_two_sources_with_one_name_are_an_error_at_the_second() -> None:
    """Two files named alike in different folders defaulted to one source name: their
    metrics, dead letters and rejected-input positions could not be told apart."""
    oms = {"kind": "file", "path": "oms/events.jsonl"}
    wms = {"kind": "file", "path": "wms/events.jsonl"}
    (error,) = errors_of({"sources": [oms, wms]})
    assert error.startswith("sources[1].name: 'file:events.jsonl' (the default, from the file")
    assert "sources[0]" in error
    (error,) = errors_of({"sources": [oms, {**wms, "name": "file:events.jsonl"}]})
    assert error.startswith("sources[1].name: 'file:events.jsonl' is also")
    assert errors_of({"sources": []})[0].startswith("sources: an empty list")
    named = {"sources": [{**oms, "name": "oms"}, {**wms, "name": "wms"}]}
    assert [s.name for s in validate_config(named).sources] == ["oms", "wms"]


def test_a_key_given_twice_is_an_error_at_its_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second `rules:` silently dropped the first
    block's rules. A merge key (`<<: *defaults`) may still be overridden."""
    path = tmp_path / "c.yaml"
    path.write_text("rules:\n  gaps: {}\nlateness: 5s\nrules:\n  stuck: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (line,) = err.value.errors
    assert "line 4, column 1" in line and "duplicate key 'rules'" in line
    path.write_text(
        "x: &d {within: 5m, severity: info}\nrules:\n  gaps:\n"
        "    paid_without_wms: {<<: *d, within: 10m}\n"
    )
    with pytest.raises(ConfigError) as err:  # the only error is `x`, an unknown key
        load_config(path)
    assert [e.split(":")[0] for e in err.value.errors] == ["x"]


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (
            {"summary": "Order {order} stuck"},
            "summary: Value error, unknown placeholder {order}",
        ),
        (
            {"description": "trace {carrier"},
            "description: Value error, expected '}'",
        ),
        (
            {"runbook_url": "wiki/stalled"},
            "runbook_url: String should match pattern",
        ),
        # names it knows, but a spec or conversion a str refuses, or a padding to 1 GB
        ({"summary": "waited {dwell:d}"}, "summary: Value error, 'waited {dwell:d}' cannot be"),
        ({"summary": "{status!x}"}, "summary: Value error, '{status!x}' cannot be filled in"),
        ({"description": "{dwell:{width}}"}, "description: Value error, '{dwell:{width}}' cannot"),
        ({"summary": "{dwell:>999999999}"}, "summary: Value error, '{dwell:>999999999}' pads"),
    ],
)
def test_a_rules_wording_is_checked_at_start(rule: dict[str, Any], error: str) -> None:
    """A placeholder the alert cannot fill used to stop the dataflow when the rule first
    fired, hours into a run; now it is a config error naming the key."""
    stuck = {"name": "p", "statuses": ["paid"], "max_dwell": "1m", **rule}
    (found,) = errors_of({"rules": {"stuck": [stuck]}})
    assert found.startswith(f"rules.stuck[0].{error}")
    if "placeholder" in error:
        assert "use order_id, status, dwell, limit, channel, warehouse, tracking_no" in found


def test_templates_a_str_can_fill_pass() -> None:
    for text in ("{dwell:>10}", "{status!r}", "{{literal}} {order_id}", "{tracking_no:.8}"):
        stuck = {"name": "p", "statuses": ["paid"], "max_dwell": "1m", "summary": text}
        assert validate_config({"rules": {"stuck": [stuck]}}).rules.stuck[0].summary == text


def test_recovery_with_alerts_kept_in_memory_is_refused() -> None:
    """A resumed shard knows the alerts it fired; a store that forgot them would never show
    them again (and would announce again what the snapshot did not cover)."""
    (found,) = errors_of({"state": {"recovery": True, "alert_store": "memory"}})
    why = "recovery: true needs alert_store: file (the alerts it resumes)"
    assert found == f"state: Value error, {why}"
    assert validate_config({"state": {"recovery": True}}).state.alert_store == "file"


def test_check_config_shows_each_rule_s_next_step_and_runbook_and_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the on-call will read in an alert, seen before it runs; and whether a restart
    keeps the orders (without recovery, alerts it cannot raise again end as unconfirmed)."""
    monkeypatch.chdir(tmp_path)
    stuck = {
        "name": "stalled",
        "statuses": ["in_transit"],
        "max_dwell": "48h",
        "description": "call the carrier",
        "runbook_url": "https://wiki.example/stalled",
    }
    gaps = {"paid_without_wms": {"within": "10m", "runbook_url": "https://wiki.example/leak"}}
    Path("r.yaml").write_text(yaml.safe_dump({"rules": {"stuck": [stuck], "gaps": gaps}}))
    assert main(["check-config", "r.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index("  stalled: in_transit longer than 48h since entered → warning")
    assert out[at + 1 : at + 3] == [
        "    next step: call the carrier",
        "    runbook: https://wiki.example/stalled",
    ]
    at = next(i for i, x in enumerate(out) if x.startswith("  paid_without_wms: within 10m"))
    assert out[at + 1] == "    runbook: https://wiki.example/leak"
    assert any("recovery off: a restart rebuilds the orders" in x for x in out)


def test_a_stuck_rule_may_not_take_a_gap_rule_s_name() -> None:
    """Their alerts would share one key in a shard: one would end or replace the other."""
    stuck = [{"name": "paid_without_wms", "statuses": ["paid"], "max_dwell": "1h"}]
    (line,) = errors_of({"rules": {"stuck": stuck}})
    assert line.startswith("rules.stuck[0].name: 'paid_without_wms' is a gap rule's name")


def test_check_config_names_the_token_file_when_one_is_set() -> None:
    """`http.token_file` set: the description said the token came from $ORDERWATCH_TOKEN."""
    from orderwatch.describe import describe

    assert "http token (for the switch API) from $ORDERWATCH_TOKEN" in describe(validate_config({}))
    cfg = validate_config({"http": {"token_file": "/run/secrets/ow-token"}})
    assert "http token (for the switch API) from /run/secrets/ow-token" in describe(cfg)
