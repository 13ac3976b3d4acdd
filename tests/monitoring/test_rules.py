"""The alert rules, checked and unit-tested by the real promtool (Debian package prometheus)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from portctl.errors import InvalidInput
from portctl.monitoring.rules import prometheus_rules

UNIT_TESTS = Path(__file__).with_name("rules_test.yml")
ALERTS = {
    "PortctlPortConflict",
    "PortctlInstanceCritical",
    "PortctlInstanceNotChecked",
    "PortctlRangeNearlyFull",
    "PortctlStoreUnreachable",
    "PortctlExporterDown",
    "PortctlHostScanStale",
    "PortctlHostScanFailing",
    "PortctlStoreCorruptKeys",
}


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def rules_in(text: str) -> dict[str, dict]:
    (group,) = yaml.safe_load(text)["groups"]
    assert group["name"] == "portctl"
    return {rule["alert"]: rule for rule in group["rules"]}


def written(folder: Path, text: str, unit_tests: str | None = None) -> Path:
    (folder / "portctl-rules.yml").write_text(text)
    (folder / "rules_test.yml").write_text(unit_tests if unit_tests is not None else UNIT_TESTS.read_text())
    return folder


def test_rules_pass_promtool_check(promtool, tmp_path):
    written(tmp_path, prometheus_rules())
    result = run(promtool, "check", "rules", "portctl-rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_unit_tests_of_every_alert_pass(promtool, tmp_path):
    written(tmp_path, prometheus_rules())
    result = run(promtool, "test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout + result.stderr


def test_unit_tests_cover_every_alert_firing_and_quiet():
    cases = [
        case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert set(rules_in(prometheus_rules())) == ALERTS
    assert firing == ALERTS
    assert quiet == ALERTS
    for case in cases:
        for alert in case["exp_alerts"]:
            assert set(alert) == {"exp_labels", "exp_annotations"}
            assert set(alert["exp_annotations"]) == {"summary", "description"}


def test_a_wrong_expectation_fails_the_unit_tests(promtool, tmp_path):
    broken = UNIT_TESTS.read_text().replace("holder: nginx (pid 4242)", "holder: sshd (pid 1)")
    assert broken != UNIT_TESTS.read_text()
    written(tmp_path, prometheus_rules(), broken)
    result = run(promtool, "test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
    assert "alertname: PortctlPortConflict" in result.stdout + result.stderr


def test_every_alert_has_its_wait_severity_and_annotations():
    rules = rules_in(prometheus_rules())
    waits = {name: rule["for"] for name, rule in rules.items()}
    assert waits == {
        "PortctlPortConflict": "1m",
        "PortctlInstanceCritical": "5m",
        "PortctlInstanceNotChecked": "5m",
        "PortctlRangeNearlyFull": "15m",
        "PortctlStoreUnreachable": "2m",
        "PortctlExporterDown": "5m",
        "PortctlHostScanStale": "0s",
        "PortctlHostScanFailing": "10m",
        "PortctlStoreCorruptKeys": "5m",
    }
    critical = {name for name, rule in rules.items() if rule["labels"] == {"severity": "critical"}}
    warning = {name for name, rule in rules.items() if rule["labels"] == {"severity": "warning"}}
    assert critical == {"PortctlInstanceCritical", "PortctlStoreUnreachable", "PortctlExporterDown"}
    assert warning == ALERTS - critical
    for rule in rules.values():
        assert list(rule) == ["alert", "expr", "for", "labels", "annotations"]
        assert list(rule["annotations"]) == ["summary", "description"]


def test_critical_for_sets_the_wait_of_the_instance_alert(promtool, tmp_path):
    text = prometheus_rules(critical_for="30s")
    rule = rules_in(text)["PortctlInstanceCritical"]
    assert rule["for"] == "30s"
    assert "critical for more than 30s." in rule["annotations"]["description"]
    assert "    for: 30s\n" in text
    written(tmp_path, text)
    assert run(promtool, "check", "rules", "portctl-rules.yml", cwd=tmp_path).returncode == 0


def test_job_names_the_scrape_job_watched(promtool, tmp_path):
    text = prometheus_rules(job="portctl-edge")
    assert rules_in(text)["PortctlExporterDown"]["expr"] == (
        'up{job="portctl-edge"} == 0 or absent(up{job="portctl-edge"})'
    )
    quoted = prometheus_rules(job='odd "name" \\ here')
    for rendered in (text, quoted):
        written(tmp_path, rendered)
        result = run(promtool, "check", "rules", "portctl-rules.yml", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("job", ["", "  ", "two\nlines", None, 7])
def test_a_bad_job_is_refused(job):
    with pytest.raises(InvalidInput) as refused:
        prometheus_rules(job=job)
    assert refused.value.field == "job"


BAD_DURATIONS = ["", "5", "m", "5 m", " 5m", "5m\n", "5M", "1.5h", "-5m", "5m1h", "5mm", "\u0665m", "293y"]
GOOD_DURATIONS = ["0", "0s", "30s", "5m", "1h", "1h30m", "2d", "1w", "1y2w3d4h5m6s7ms", "292y"]


@pytest.mark.parametrize("value", BAD_DURATIONS)
def test_a_bad_critical_for_is_refused(value):
    with pytest.raises(InvalidInput) as refused:
        prometheus_rules(critical_for=value)
    assert refused.value.field == "critical_for"
    assert refused.value.value == value
    assert refused.value.expected == "a Prometheus duration such as 5m"
    assert str(refused.value).startswith("critical_for: ")


def test_a_critical_for_not_a_string_is_refused():
    with pytest.raises(
        InvalidInput, match=r"^critical_for: 300 is not valid; expected a Prometheus duration"
    ):
        prometheus_rules(critical_for=300)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", GOOD_DURATIONS + BAD_DURATIONS)
def test_critical_for_is_refused_exactly_when_promtool_refuses_it(promtool, tmp_path, value):
    """A file with that wait for the instance alert, checked by promtool, agrees with us."""
    good = prometheus_rules()
    document = yaml.safe_load(good)
    rules_in(good)  # one group
    document["groups"][0]["rules"][1]["for"] = value
    written(tmp_path, yaml.safe_dump(document, sort_keys=False))
    promtool_accepts = run(promtool, "check", "rules", "portctl-rules.yml", cwd=tmp_path).returncode == 0
    try:
        prometheus_rules(critical_for=value)
    except InvalidInput:
        accepted = False
    else:
        accepted = True
    assert accepted == promtool_accepts
    assert accepted == (value in GOOD_DURATIONS)
