"""A cutover and a rollback through a real nginx, following the registry with
``portctl render nginx --watch --reload``: clients keep sending requests the whole time, none
fails, and the answers change color. The time from the flip to the first answer of the new
color is printed and recorded (never asserted)."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import datetime

import pytest

from tests.cli.conftest import PORTCTL
from tests.routing.conftest import Client, get


def _deploy(run, colors) -> None:
    for color in ("blue", "green"):
        port = colors[color].port
        result = run(
            "bluegreen", "deploy", "api", "--color", color, "--port", port,
            "--check", "http://127.0.0.1:{port}/health",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def _flip(run, *args: str) -> float:
    result = run("bluegreen", *args, "--drain", "2s", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    return datetime.fromisoformat(json.loads(result.stdout)["data"]["flipped_at"]).timestamp()


@pytest.fixture
def follower(tmp_path, cli_env, nginx):
    """Starts ``portctl render nginx --watch --reload 'nginx -s reload'`` as a user would run it."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [
                PORTCTL, "render", "nginx", "--output", str(nginx.prefix / "upstreams.conf"), "--watch",
                "--reload", nginx.reload_line, "--quiet-period", "200ms",
            ],
            cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        print(err)


def test_cutover_and_rollback_through_nginx_lose_no_request(run, colors, nginx, follower, record_property):
    _deploy(run, colors)
    upstreams = nginx.prefix / "upstreams.conf"
    assert run("render", "nginx", "--output", upstreams).returncode == 0
    nginx.start()
    watcher = follower()
    client = Client(lambda: get(nginx.port)).start()
    try:
        client.wait_for("blue")
        flipped = _flip(run, "cutover", "api", "--to", "green", "--min-healthy", "1s")
        client.wait_for("green")
        to_green = client.first_since("green", flipped)
        assert f"127.0.0.1:{colors['green'].port}" in upstreams.read_text()

        flipped_back = _flip(run, "rollback", "api")
        client.wait_for("blue")
        to_blue = client.first_since("blue", flipped_back)
    finally:
        client.finish()
    assert client.failures == []
    colors_seen = [body for _, body in client.answers]
    assert {"blue", "green"} <= set(colors_seen)
    assert colors_seen[-1] == "blue"
    assert watcher.poll() is None, "the render --watch process exited"
    assert to_green is not None
    assert to_blue is not None
    switch = {"to_green_ms": (to_green - flipped) * 1000, "to_blue_ms": (to_blue - flipped_back) * 1000}
    for name, value in switch.items():
        record_property(name, round(value, 1))
    print(f"\nnginx switch time: flip -> first green {switch['to_green_ms']:.0f} ms, "
          f"rollback -> first blue {switch['to_blue_ms']:.0f} ms, {len(client.answers)} requests, 0 failed")  # fmt: skip
