"""``portctl render``: nginx upstreams and HAProxy backends checked and served by the real
programs, Prometheus targets, the quiet period of ``--watch``, and a failing ``--reload``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time

import pytest

from portctl.config.settings import Settings
from portctl.registry.entries import CheckSpec, Registry
from portctl.routing.bluegreen import BlueGreen
from portctl.routing.render import Follower, render
from tests.cli.conftest import error_line
from tests.routing.conftest import HAPROXY, NGINX, NGINX_CONF, free_loopback_port, get

SETTINGS = Settings(host="test-host")


@pytest.fixture
def populated(store, colors):
    """api in blue-green (blue live), web without colors (one healthy, one critical instance),
    and idle, registered but with no healthy instance."""
    bg = BlueGreen(store, SETTINGS)
    for color in ("blue", "green"):
        bg.deploy("api", color, port=colors[color].port, check=CheckSpec("none"))
    registry = Registry(store, SETTINGS)
    registry.register("web", port=colors["green"].port, instance_id="web-1", check=CheckSpec("none"))
    registry.register("web", port=1, instance_id="web-2", check=CheckSpec("tcp"))  # never checked: critical
    registry.register("idle", port=2, check=CheckSpec("tcp"))
    return store


def test_nginx_upstreams_follow_the_live_color_and_health(populated, colors, tmp_path):
    text = render(populated, "nginx", "production", "test-host")
    assert f"upstream api {{\n    # live color: blue\n    server 127.0.0.1:{colors['blue'].port};" in text
    assert f":{colors['green'].port};  # api-green" not in text  # the idle color takes no traffic
    assert f"upstream web {{\n    server 127.0.0.1:{colors['green'].port};  # web-1 passing\n}}" in text
    assert "upstream idle {\n    server 127.0.0.1:9 down;  # no healthy instance\n}" in text
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian package nginx)")
    upstreams = tmp_path / "upstreams.conf"
    upstreams.write_text(text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(upstreams=upstreams, port=free_loopback_port()))
    (tmp_path / "logs").mkdir()
    globals_ = f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", globals_],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


HAPROXY_MAIN = """\
global
    maxconn 100
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend public
    bind 127.0.0.1:{port}
    default_backend api
"""


def test_haproxy_backends_pass_its_check_and_serve_the_live_color(populated, run, tmp_path, colors):
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    backends = tmp_path / "backends.cfg"
    backends.write_text(render(populated, "haproxy", "production", "test-host"))
    assert (
        f"backend api\n    # live color: blue\n    balance roundrobin\n    server api-blue-test-host 127.0.0.1:{colors['blue'].port}"
        in backends.read_text()
    )
    port = free_loopback_port()
    main = tmp_path / "haproxy.cfg"
    main.write_text(HAPROXY_MAIN.format(port=port))
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(main), "-f", str(backends)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proxy = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(main), "-f", str(backends)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert get(port) == "blue"
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise
                time.sleep(0.05)
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_prometheus_targets_list_every_instance_labelled(populated, colors):
    groups = json.loads(render(populated, "prometheus", "production", "test-host"))
    by_labels = {
        (g["labels"]["service"], g["labels"].get("color"), g["labels"]["live"]): g["targets"] for g in groups
    }
    assert by_labels[("api", "blue", "true")] == [f"127.0.0.1:{colors['blue'].port}"]
    assert by_labels[("api", "green", "false")] == [f"127.0.0.1:{colors['green'].port}"]
    assert sorted(by_labels[("web", None, "true")]) == sorted(
        [f"127.0.0.1:{colors['green'].port}", "127.0.0.1:1"]
    )


def test_a_burst_of_changes_causes_one_reload(store, tmp_path):
    """Twelve registrations within the quiet period: one render, one reload."""
    marks = tmp_path / "reloads"
    reload = [sys.executable, "-c", f"open({str(marks)!r}, 'a').write('r\\n')"]
    output = tmp_path / "upstreams.conf"
    events: list[str] = []
    stop = threading.Event()
    follower = Follower(
        store,
        "nginx",
        "production",
        "test-host",
        str(output),
        reload=reload,
        quiet=1.0,
        on_event=events.append,
        stop=stop,
    )
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        _wait(marks.exists)  # the first rendering, reloaded once
        registry = Registry(store, SETTINGS)
        for i in range(12):
            registry.register("web", port=20000 + i, instance_id=f"web-{i}", check=CheckSpec("none"))
        _wait(lambda: "web-11" in output.read_text())
        time.sleep(2.5)  # longer than the quiet period twice over: a second reload would show
    finally:
        stop.set()
        thread.join(10)
    assert marks.read_text().count("r") == 2, events
    assert follower.reloads == 2


def test_a_failing_reload_puts_the_previous_file_back(populated, run, store_path, tmp_path):
    output = tmp_path / "upstreams.conf"
    output.write_text("# the config the router runs now\n")
    before = store_path.read_bytes()
    result = run("render", "nginx", "--output", output, "--reload", "false")
    assert result.returncode == 1
    line = error_line(result)
    assert "reload command failed (exit 1): false" in line
    assert f"{output} was put back as it was" in line
    assert output.read_text() == "# the config the router runs now\n"
    assert store_path.read_bytes() == before


def test_a_failing_reload_while_watching_is_reported_and_the_watch_goes_on(populated, tmp_path):
    output = tmp_path / "upstreams.conf"
    output.write_text("# old\n")
    events: list[str] = []
    stop = threading.Event()
    follower = Follower(
        populated,
        "nginx",
        "production",
        "test-host",
        str(output),
        reload=["false"],
        quiet=0.1,
        on_event=events.append,
        stop=stop,
    )
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: follower.failures >= 1)
        Registry(populated, SETTINGS).register("extra", port=3, check=CheckSpec("none"))
        _wait(lambda: follower.failures >= 2)  # the next change tries again
    finally:
        stop.set()
        thread.join(10)
    assert output.read_text() == "# old\n"
    assert all("was put back as it was" in e for e in events)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("apache",),
            "TARGET: 'apache' is not valid; expected nginx, haproxy, prometheus, prometheus-rules or grafana",
        ),
        (("nginx", "--watch"), "--output: missing; expected a file to write"),
        (
            ("nginx", "-o", "x.conf", "--reload", "no-such-reloader -s reload"),
            "--reload: 'no-such-reloader' is not valid",
        ),
        (
            ("nginx", "-o", "x.conf", "--reload", "nginx 'unbalanced"),
            '--reload: "nginx \'unbalanced" is not valid',
        ),
        (("nginx", "--watch", "-o", "x.conf", "--quiet-period", "1"), "--quiet-period: '1' is not valid"),
    ],
)
def test_bad_render_input(run, tmp_path, args, message):
    result = run("render", *args)
    assert result.returncode == 2
    assert message in error_line(result)
    assert not (tmp_path / "x.conf").exists()


def test_render_prints_to_stdout_without_output(run, colors):
    assert run("bluegreen", "deploy", "api", "--color", "blue", "--port", colors["blue"].port).returncode == 0
    result = run("render", "haproxy")
    assert result.returncode == 0, result.stderr
    assert f"server api-blue-test-host 127.0.0.1:{colors['blue'].port}" in result.stdout
    again = run("render", "nginx", "-o", "up.conf", "--reload", shlex.join([sys.executable, "-c", "pass"]))
    assert again.stdout.strip() == "up.conf: written, reloaded"
    assert run("render", "nginx", "-o", "up.conf").stdout.strip() == "up.conf: unchanged"


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
