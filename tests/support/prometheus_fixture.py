"""A real Prometheus and a real headless Chromium for the monitoring end-to-end tests.

Prometheus is Debian's ``/usr/bin/prometheus`` on loopback, on a free port, with its TSDB under
the test's folder; Chromium is driven by Selenium through Debian's chromedriver. Each fixture
skips, naming the Debian package, only when its binary is absent. Every process started here
is stopped (SIGTERM, then a wait; SIGKILL only if it will not go) in a finalizer.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import free_port

PROMETHEUS = "/usr/bin/prometheus"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T | None], seconds: float = 30, pause: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline.

    The pause is only between polls of a real condition, never a wait for its own sake."""
    deadline = time.monotonic() + seconds
    last: object = None
    while True:
        try:
            value = probe()
        except Exception as e:  # the condition's own error is the last word at the deadline
            value, last = None, e
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not so within {seconds:g}s; last seen: {last!r}")
        time.sleep(pause)


class Processes:
    """Processes a test starts, stopped in reverse order when it ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - it lives as long as the process
        kwargs.setdefault("stdout", log)
        process = subprocess.Popen(argv, stderr=log, stdin=subprocess.DEVNULL, **kwargs)
        log.close()
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop(process)


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    """Signal ``process`` and wait for it; its exit code."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


def first_line(process: subprocess.Popen[bytes], seconds: float = 20) -> str:
    """The first line ``process`` prints on its stdout (a pipe), within ``seconds``."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not selector.select(timeout=left):
            pytest.fail(f"no line on stdout within {seconds:g}s (exit {process.poll()})")
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            pytest.fail(f"stdout closed before a whole line: {line!r} (exit {process.wait()})")
        line += chunk
    selector.close()
    return line.decode().strip()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback URLs only
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Prometheus:
    """One Prometheus process and its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        answer = json.loads(body)
        assert status == 200, answer
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, promql: str) -> dict[str, float]:
        """An instant vector: each series' labels (as ``k=v,...``, sorted) -> its value."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return {_labels(r["metric"]): float(r["value"][1]) for r in data["result"]}

    def series(self, promql: str, label: str) -> dict[str, float]:
        """An instant vector keyed by one label's value."""
        data = self.api("query", query=promql)
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in data["result"]}

    def firing(self, alertname: str) -> list[dict[str, str]]:
        """The labels of each firing alert of that name."""
        alerts = self.api("alerts")["alerts"]
        return [
            a["labels"] for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])


def _labels(metric: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(metric.items()))


@pytest.fixture
def start_prometheus(processes: Processes, tmp_path: Path) -> Callable[[str], Prometheus]:
    """Start Prometheus with the given YAML configuration; it is ready when this returns."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} is not installed (Debian package prometheus)")

    def start(config: str) -> Prometheus:
        folder = tmp_path / f"prometheus-{len(processes.started)}"
        folder.mkdir()
        (folder / "prometheus.yml").write_text(config)
        port = free_port(start=29000)
        argv = [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        process = processes.start("prometheus", argv, cwd=folder)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited {process.returncode}:\n{processes.log('prometheus')}")
            return http_get(f"{url}/-/ready", timeout=2)[0] == 200

        wait_until("prometheus answers /-/ready", ready)
        return Prometheus(process, url)

    return start


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium, 1280x900, driven by Selenium."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    if not os.access(CHROMEDRIVER, os.X_OK):
        pytest.skip(f"{CHROMEDRIVER} is not installed (Debian package chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_window_size(1280, 900)
        yield driver
    finally:
        driver.quit()
