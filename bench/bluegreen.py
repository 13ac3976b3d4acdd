"""Blue-green cutover: how soon resolvers and a router follow the flip of the live pointer.

    python bench/bluegreen.py [--resolvers 50] [--flips 20] [--nginx-flips 10]

Per store (the JSON file; etcd too when the etcd store and an ``etcd`` binary are present, on a
throwaway member started on loopback): 50 ``ServiceDiscovery`` resolvers follow the store, the
live color is flipped (``BlueGreen.cutover`` with no healthy window and no drain), and the
time from the compare-and-set to each resolver answering with the new color is taken; the
table shows p50/p99 of the slowest of the 50 per flip, and over every resolver.

Through nginx (when installed): two HTTP backends answering with their color, nginx in front
of them on loopback, ``portctl.routing.render.Follower`` re-rendering its upstreams with a 200 ms quiet
period and reloading it, and one client sending requests on new connections all along: the
time from the flip to the first answer of the new color, and the failed requests (must be 0).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for tests/

from bench._common import percentile
from portctl.backends import open_store
from portctl.backends.base import Store
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery
from portctl.registry.entries import CheckSpec
from portctl.routing.bluegreen import BlueGreen
from portctl.routing.render import Follower, install, render
from tests.support.etcd_fixture import start_single

SETTINGS = Settings(host="bench-host")
GIVE_UP = 10.0
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Backends and stores --------------------------------------------------------------------------


class _Color(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.color.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def color_servers() -> Iterator[dict[str, int]]:
    servers = {}
    for color in ("blue", "green"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Color)
        server.daemon_threads = True
        server.color = color  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers[color] = server
    try:
        yield {c: int(s.server_address[1]) for c, s in servers.items()}
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()


@contextmanager
def throwaway_etcd(folder: str) -> Iterator[str]:
    """One etcd member on loopback ports, started as the test fixture starts it."""
    member = start_single(Path(folder) / "etcd")
    try:
        yield f"etcd://{member.endpoint}/bench"
    finally:
        member.kill()


@contextmanager
def consul_emulator(folder: str) -> Iterator[str]:
    """The Consul HTTP API emulator of the tests, in a process of its own (so the resolvers
    measured here do not share its interpreter)."""
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = open(os.path.join(folder, "consul-emulator.log"), "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.consul_emulator", "--port", str(port)],
        cwd=root,
        stdout=log,
        stderr=log,
    )
    log.close()
    try:
        _wait_listening(port)
        yield f"consul://127.0.0.1:{port}/bench"
    finally:
        process.terminate()
        process.wait(30)


def deploy(store: Store, ports: dict[str, int]) -> BlueGreen:
    bg = BlueGreen(store, SETTINGS)
    for color, port in ports.items():
        bg.deploy("api", color, port=port, check=CheckSpec("none"))
    return bg


# Resolvers ------------------------------------------------------------------------------------


def resolver_flips(
    url: str, ports: dict[str, int], resolvers: int, flips: int, folder: str
) -> dict[str, list[float]]:
    """Per flip: ms from the compare-and-set to each resolver answering with the new color."""
    store = open_store(url)
    bg = deploy(store, ports)
    found = [
        ServiceDiscovery(url, settings=SETTINGS, cache_file=os.path.join(folder, f"cache-{i}.json"))
        for i in range(resolvers)
    ]
    slowest: list[float] = []
    every: list[float] = []
    try:
        for _ in range(flips):
            time.sleep(0.05)  # land at different points of the feed's wait
            result = bg.cutover("api", min_healthy=0, drain=0)
            suffix = f":{ports[result.to_color or '']}"
            seen: dict[int, float] = {}
            while len(seen) < len(found):
                now = time.time()
                for i, r in enumerate(found):
                    if i not in seen and r.get_service_url("api").endswith(suffix):
                        seen[i] = now
                if now - result.flipped_at > GIVE_UP:
                    raise SystemExit(
                        f"{len(found) - len(seen)} resolvers did not follow the flip in {GIVE_UP:g}s"
                    )
                time.sleep(0.0002)
            delays = [(t - result.flipped_at) * 1000 for t in seen.values()]
            slowest.append(max(delays))
            every.extend(delays)
    finally:
        for r in found:
            r.close()
        store.close()
    return {"slowest": slowest, "every": every}


# nginx ------------------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    include {upstreams};
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://api; }}
    }}
}}
"""


def _get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return body
    finally:
        conn.close()


def nginx_flips(url: str, ports: dict[str, int], flips: int, folder: str) -> tuple[list[float], int, int]:
    """ms from each flip to nginx's first answer of the new color; failed and total requests."""
    prefix = os.path.join(folder, "nginx")
    os.makedirs(os.path.join(prefix, "logs"))
    listen = free_port()
    upstreams, conf = os.path.join(prefix, "upstreams.conf"), os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(upstreams=upstreams, port=listen))
    flags = [
        "-p",
        prefix,
        "-c",
        conf,
        "-g",
        f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;",
    ]
    store = open_store(url)
    bg = deploy(store, ports)
    stop = threading.Event()
    follower = Follower(
        store,
        "nginx",
        "production",
        SETTINGS.host,
        upstreams,
        reload=[NGINX, *flags, "-s", "reload"],
        quiet=0.2,
        stop=stop,
    )
    install(upstreams, render(store, "nginx", "production", SETTINGS.host))  # before nginx starts
    server = subprocess.Popen([NGINX, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers: list[tuple[float, str]] = []
    failures = [0]
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            try:
                answers.append((time.time(), _get(listen)))
            except (OSError, RuntimeError, http.client.HTTPException):
                failures[0] += 1
            time.sleep(0.001)

    threads = [
        threading.Thread(target=follower.run, daemon=True),
        threading.Thread(target=client, daemon=True),
    ]
    delays: list[float] = []
    try:
        _wait_listening(listen)
        for t in threads:
            t.start()
        for _ in range(flips):
            time.sleep(0.5)
            result = bg.cutover("api", min_healthy=0, drain=0)
            while True:
                switched = [t for t, body in answers if body == result.to_color and t >= result.flipped_at]
                if switched and answers[-1][1] == result.to_color:
                    delays.append((switched[0] - result.flipped_at) * 1000)
                    break
                if time.time() - result.flipped_at > GIVE_UP:
                    raise SystemExit(f"nginx did not switch to {result.to_color} in {GIVE_UP:g}s")
                time.sleep(0.005)
    finally:
        done.set()
        stop.set()
        for t in threads:
            t.join(10)
        server.terminate()
        server.wait(10)
        store.close()
    return delays, failures[0], len(answers)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit("nginx did not start")


# The table --------------------------------------------------------------------------------------


def row(label: str, values: list[float], extra: str = "") -> str:
    cells = f"{percentile(values, 0.5):>9.1f}{percentile(values, 0.99):>9.1f}{max(values):>9.1f}"
    return f"{label:<52}{cells}{len(values):>7}  {extra}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolvers", type=int, default=50)
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--nginx-flips", type=int, default=10)
    args = parser.parse_args()
    rows: list[str] = []
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, color_servers() as ports:
        stores = [("file", f"file://{tmp}/store.json")]
        etcd_ready = importlib.util.find_spec("portctl.backends.etcd") is not None and shutil.which("etcd")
        with contextlib_nullable(throwaway_etcd(tmp) if etcd_ready else None) as etcd_url:
            if etcd_url:
                stores.append(("etcd", etcd_url))
            for name, url in stores:
                folder = tempfile.mkdtemp(dir=tmp)
                times = resolver_flips(url, ports, args.resolvers, args.flips, folder)
                rows.append(
                    row(f"{name}: flip -> all {args.resolvers} resolvers new color", times["slowest"])
                )
                rows.append(row(f"{name}: flip -> one resolver new color (every one)", times["every"]))
            if not etcd_ready:
                rows.append(f"{'etcd: skipped (no etcd store module or no etcd binary)':<52}")
        with consul_emulator(tmp) as consul_url:
            times = resolver_flips(consul_url, ports, args.resolvers, args.flips, tempfile.mkdtemp(dir=tmp))
            label = f"consul emulator: flip -> all {args.resolvers} resolvers new color"
            rows.append(row(label, times["slowest"]))
            rows.append(row("consul emulator: flip -> one resolver new color", times["every"]))
        if os.path.exists(NGINX):
            nginx_store = f"file://{tmp}/nginx-store.json"
            delays, errors, total = nginx_flips(
                nginx_store, ports, args.nginx_flips, tempfile.mkdtemp(dir=tmp)
            )
            rows.append(
                row(
                    "nginx (file store): flip -> first new-color answer",
                    delays,
                    f"errors {errors} of {total} requests",
                )
            )
            failed = int(errors != 0)
        else:
            rows.append("nginx: skipped (not installed)")
    print(f"{'blue-green cutover (ms)':<52}{'p50':>9}{'p99':>9}{'max':>9}{'n':>7}")
    for line in rows:
        print(line)
    return failed


@contextmanager
def contextlib_nullable(manager):  # type: ignore[no-untyped-def]
    if manager is None:
        yield None
        return
    with manager as value:
        yield value


if __name__ == "__main__":
    sys.exit(main())
