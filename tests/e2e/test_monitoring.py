"""What a user of `portctl serve` sees, with every component real.

Three real services (Python's HTTP server, each serving a /metrics file) are registered with
http and tcp checks in a JSON store; `portctl agent` records their health; `portctl serve`
exports it. A real Prometheus scrapes portctl and, through the file_sd targets that `portctl
render prometheus` writes, the services themselves, and evaluates one alert. A real headless
Chromium reads the status page. Then one service is killed: Prometheus, the alert and the page
must all say so, about that service alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

# The fixtures (processes, start_prometheus, browser) come from the support module as a plugin;
# its asserts are rewritten like a conftest's, so it must be registered before it is imported.
pytest.register_assert_rewrite("tests.support.prometheus_fixture")
pytest_plugins = ["tests.support.prometheus_fixture"]

from tests.support.prometheus_fixture import (  # noqa: E402 - after the registration above
    Processes,
    Prometheus,
    first_line,
    http_get,
    stop,
    wait_until,
)

PORTCTL = os.path.join(os.path.dirname(sys.executable), "portctl")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "status-page.png"
HOST = "app-1"
GREEN = "rgb(26, 127, 55)"
RED = "rgb(207, 34, 46)"
ALERT = "PortctlInstanceCritical"
RULES = f"""groups:
  - name: portctl
    rules:
      - alert: {ALERT}
        expr: portctl_service_instance_status{{status="critical"}} == 1
        for: 2s
        labels:
          severity: page
        annotations:
          summary: "{{{{ $labels.service_id }}}} is critical"
"""


@dataclass
class Service:
    name: str
    check: str  # "tcp" or "http"
    port: int
    process: subprocess.Popen[bytes]

    @property
    def id(self) -> str:
        return f"{self.name}-{HOST}-{self.port}"


@dataclass
class Stack:
    services: list[Service]
    serve_url: str
    prometheus: Prometheus


def _environ(tmp_path: Path) -> dict[str, str]:
    """A portctl of its own: JSON store, empty config file, host name and state in tmp_path."""
    config = tmp_path / "portctl.toml"
    config.write_text("# the defaults\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PORTCTL_")}
    environ.update(
        {
            "PORTCTL_STORE": f"file://{tmp_path / 'store.json'}",
            "PORTCTL_CONFIG": str(config),
            "PORTCTL_HOST": HOST,
            "PORTCTL_ENV": "production",
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "NO_COLOR": "1",
        }
    )
    return environ


def _portctl(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PORTCTL, *(str(a) for a in args)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _start_service(processes: Processes, tmp_path: Path, name: str, start: int) -> tuple[int, Any]:
    """Python's HTTP server on loopback, serving a folder with a `metrics` file in it."""
    folder = tmp_path / "www" / name
    folder.mkdir(parents=True)
    (folder / "metrics").write_text(
        f'# TYPE demo_requests_total counter\ndemo_requests_total{{app="{name}"}} 1\n'
    )
    port = free_port(start=start)
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    process = processes.start(name, argv)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{name} exited {process.returncode}:\n{processes.log(name)}")
        return http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)[0] == 200

    wait_until(f"{name} answers on {port}", answers)
    return port, process


def _start_serve(processes: Processes, env: dict[str, str], name: str = "serve") -> tuple[str, Any]:
    argv = [PORTCTL, "serve", "--listen", "127.0.0.1:0", "--refresh", "1s", "--scan-interval", "1s"]
    process = processes.start(name, argv, env=env, stdout=subprocess.PIPE)
    line = first_line(process)
    assert line.startswith("serving http://127.0.0.1:"), line + processes.log(name)
    url = line.removeprefix("serving ")
    # Ready by itself once the store is read (serve reads it at start), before any scrape.
    wait_until("portctl serve answers /-/ready", lambda: http_get(f"{url}/-/ready")[0] == 200)
    return url, process


def _prometheus_config(serve_url: str, targets: Path | None, rules: Path | None) -> str:
    where = serve_url.removeprefix("http://")
    lines = [
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: portctl",
        "    scrape_timeout: 1s",
        "    metrics_path: /metrics",
        "    static_configs:",
        f"      - targets: ['{where}']",
    ]
    if targets is not None:
        lines += [
            "  - job_name: services",
            "    file_sd_configs:",
            f"      - files: ['{targets}']",
        ]
    if rules is not None:
        lines[3:3] = ["rule_files:", f"  - '{rules}'"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def stack(tmp_path: Path, processes: Processes, start_prometheus: Any) -> Stack:
    """Three registered services, the agent, portctl serve, and Prometheus watching them."""
    env = _environ(tmp_path)
    services: list[Service] = []
    start = 24100
    for name, check in (("api", "http"), ("postgres", "tcp"), ("redis", "tcp")):
        port, process = _start_service(processes, tmp_path, name, start)
        start = port + 1
        how = f"http://127.0.0.1:{port}/metrics" if check == "http" else "tcp"
        registered = _portctl(env, "register", name, "--port", port, "--check", how, "--interval", "1s")
        assert registered.returncode == 0, registered.stdout + registered.stderr
        assert "passing" in registered.stdout, registered.stdout
        services.append(Service(name, check, port, process))
    processes.start("agent", [PORTCTL, "agent", "--zombie-grace", "10m"], env=env)
    targets = tmp_path / "targets.json"
    rendered = _portctl(env, "render", "prometheus", "-o", targets)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    serve_url, _ = _start_serve(processes, env)
    prometheus = start_prometheus(_prometheus_config(serve_url, targets, rules))
    return Stack(services, serve_url, prometheus)


def _healthy(prometheus: Prometheus) -> dict[str, float]:
    return prometheus.series("portctl_service_instance_healthy", "service_id")


def _rows(browser: Any) -> dict[str, tuple[str, str, str]]:
    """Each instance row of the page: id -> (data-status, the pill's text, its background)."""
    from selenium.webdriver.common.by import By

    rows = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "tr.instance"):
        pill = row.find_element(By.CSS_SELECTOR, ".pill")
        colour = browser.execute_script("return getComputedStyle(arguments[0]).backgroundColor", pill)
        rows[row.get_attribute("data-instance")] = (row.get_attribute("data-status"), pill.text, colour)
    return rows


def _page_shows(browser: Any, expected: dict[str, tuple[str, str, str]]) -> Any:
    """A probe: the rows as the page shows them now, when they are ``expected``."""
    from selenium.common.exceptions import StaleElementReferenceException

    def probe() -> dict[str, tuple[str, str, str]] | None:
        try:
            rows = _rows(browser)
        except StaleElementReferenceException:  # the page reloaded itself under us
            return None
        return rows if rows == expected else None

    return probe


def test_prometheus_and_the_page_see_every_service_and_the_one_that_dies(browser: Any, stack: Stack) -> None:
    prometheus = stack.prometheus
    ids = {s.id for s in stack.services}

    # Prometheus scrapes portctl, and every registered instance is healthy in it.
    wait_until(
        "up{job='portctl'} is 1", lambda: prometheus.series('up{job="portctl"}', "job") == {"portctl": 1}
    )
    wait_until("every instance healthy in Prometheus", lambda: _healthy(prometheus) == dict.fromkeys(ids, 1))
    assert prometheus.series("portctl_up", "job") == {"portctl": 1}
    # The services' own targets come from the file portctl rendered (job = the service name).
    names = {s.name for s in stack.services}
    wait_until(
        "each service's own target scraped",
        lambda: prometheus.series('up{job!="portctl"}', "service") == dict.fromkeys(names, 1),
    )
    assert prometheus.firing(ALERT) == []

    # The page, in a real browser: every row passing, with a green pill.
    browser.get(stack.serve_url + "/")
    all_green = dict.fromkeys(ids, ("passing", "passing", GREEN))
    wait_until("every row passing and green", _page_shows(browser, all_green))
    if os.environ.get("PORTCTL_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))

    # One service dies.
    victim = next(s for s in stack.services if s.name == "postgres")
    stop(victim.process, signal.SIGKILL)
    others = ids - {victim.id}

    wait_until(
        f"{victim.id} unhealthy in Prometheus",
        lambda: _healthy(prometheus) == {**dict.fromkeys(others, 1), victim.id: 0},
        seconds=20,
    )
    wait_until(
        f"{victim.name}'s own target down",
        lambda: (
            prometheus.series('up{job!="portctl"}', "service")
            == {**dict.fromkeys(names - {victim.name}, 1), victim.name: 0}
        ),
    )
    firing = wait_until(f"{ALERT} firing", lambda: prometheus.firing(ALERT), seconds=20)
    assert [a["service_id"] for a in firing] == [victim.id]
    assert firing[0]["service_name"] == victim.name
    assert firing[0]["host"] == HOST

    expected = dict.fromkeys(others, ("passing", "passing", GREEN))
    expected[victim.id] = ("critical", "critical", RED)
    wait_until("the page shows the dead service red, the others green", _page_shows(browser, expected))


def test_serve_is_scraped_within_the_timeout_prometheus_sends_and_stops_on_sigterm(
    tmp_path: Path, processes: Processes, start_prometheus: Any
) -> None:
    env = _environ(tmp_path)
    serve_url, serve = _start_serve(processes, env)
    prometheus = start_prometheus(_prometheus_config(serve_url, None, None))

    def scraped() -> dict[str, Any] | None:
        [target] = [t for t in prometheus.targets() if t["labels"]["job"] == "portctl"]
        return target if target["health"] == "up" else None

    target = wait_until("Prometheus scrapes portctl serve", scraped)
    assert target["scrapeTimeout"] == "1s"
    assert target["lastError"] == ""
    assert prometheus.series('up{job="portctl"}', "job") == {"portctl": 1}
    assert prometheus.series('portctl_collector_up{collector="store"}', "collector") == {"store": 1}

    assert stop(serve, signal.SIGTERM) == 0
    assert "portctl serve: stopped" in processes.log("serve")
