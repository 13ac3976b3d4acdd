"""``portctl render prometheus-rules`` and ``portctl render grafana`` as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.cli.conftest import error_line

PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_the_rules_file_is_written_and_promtool_accepts_it(run, tmp_path):
    target = tmp_path / "portctl.yml"
    result = run("render", "prometheus-rules", "-o", target, "--critical-for", "30s", "--job", "ports")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{target}: written"
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(target)], check=False, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = {r["alert"]: r for r in yaml.safe_load(target.read_text())["groups"][0]["rules"]}
    assert rules["PortctlInstanceCritical"]["for"] == "30s"
    assert 'job="ports"' in rules["PortctlExporterDown"]["expr"]
    again = run("render", "prometheus-rules", "-o", target, "--critical-for", "30s", "--job", "ports")
    assert again.stdout.strip() == f"{target}: unchanged"


def test_the_dashboard_and_its_provider_are_written_for_provisioning(run, tmp_path):
    folder = tmp_path / "provisioning" / "dashboards"
    folder.mkdir(parents=True)
    result = run("render", "grafana", "--provisioning", folder)
    assert result.returncode == 0, result.stderr
    provider = yaml.safe_load((folder / "portctl.yaml").read_text())
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["options"]["path"] == str(folder)
    dashboard = json.loads((folder / "portctl-dashboard.json").read_text())
    assert dashboard["uid"] == "portctl-ports"
    assert "__inputs" not in dashboard
    elsewhere = tmp_path / "dashboards" / "ports.json"
    elsewhere.parent.mkdir()
    assert run("render", "grafana", "-o", elsewhere, "--provisioning", folder).returncode == 0
    provider = yaml.safe_load((folder / "portctl.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == str(elsewhere.parent)


def test_grafana_prints_the_dashboard_without_output(run):
    result = run("render", "grafana")
    assert result.returncode == 0
    assert json.loads(result.stdout)["uid"] == "portctl-ports"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("prometheus-rules", "--critical-for", "1x"), "--critical-for: '1x' is not valid"),
        (("prometheus-rules", "--critical-for", "٥m"), "--critical-for"),
        (("grafana", "--provisioning", "/nonexistent/dashboards"), "an existing folder"),
        (("nginx", "--provisioning", "."), "--provisioning goes with grafana only"),
        (("grafana", "--watch", "-o", "x.json"), "--watch follows the registry"),
        (("grafana-dashboard",), "TARGET: 'grafana-dashboard' is not valid"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, args, says):
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run("render", *args)
    assert result.returncode == 2
    assert says in error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_provisioning_writes_nothing_when_the_dashboard_cannot_be_written(run, tmp_path):
    folder = tmp_path / "prov"
    folder.mkdir()
    for target in ("elsewhere/d.json", "prov", "prov/portctl.yaml"):
        result = run("render", "grafana", "--provisioning", folder, "-o", target)
        assert result.returncode == 2, target
        assert "--output" in error_line(result)
        assert list(folder.iterdir()) == [], target  # no provider pointing at nothing


def test_provisioning_twice_says_unchanged_and_names_both_files(run, tmp_path):
    folder = tmp_path / "prov"
    folder.mkdir()
    assert run("render", "grafana", "--provisioning", folder).returncode == 0
    again = run("--json", "render", "grafana", "--provisioning", folder)
    data = json.loads(again.stdout)["data"]
    assert data["changed"] is False
    assert data["provider"] == {
        "path": str(folder / "portctl.yaml"),
        "changed": False,
        "dashboards": str(folder),
    }
    human = run("render", "grafana", "--provisioning", folder).stdout
    assert "portctl.yaml: unchanged" in human
