"""Resolvers follow a cutover: apps calling ``get_service_url`` through ``ServiceDiscovery``
switch to the new color with no failed request, on the JSON store and on a real etcd. The
time from the flip to each resolver answering with the new color is printed (never asserted)."""

from __future__ import annotations

import importlib.util
import statistics
import time

import pytest

from portctl.backends import open_store
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery, get_service_url, set_default
from portctl.errors import InvalidInput, ServiceNotFound
from portctl.registry.entries import CheckSpec, Registry
from portctl.routing.bluegreen import BlueGreen
from tests.routing.conftest import Client, get

SETTINGS = Settings(host="test-host")
RESOLVERS = 4

etcd_param = pytest.param(
    "etcd",
    marks=pytest.mark.skipif(
        importlib.util.find_spec("portctl.backends.etcd") is None, reason="etcd store not available"
    ),
)


@pytest.fixture(params=["file", etcd_param])
def store_url(request, tmp_path) -> str:
    if request.param == "etcd":
        return request.getfixturevalue("etcd_url")
    return f"file://{tmp_path / 'store.json'}"


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("SERVICE_HOST", raising=False)
    monkeypatch.delenv("PORTCTL_API_URL", raising=False)


def _deploy(store, colors) -> BlueGreen:
    bg = BlueGreen(store, SETTINGS)
    for color in ("blue", "green"):
        check = CheckSpec("http", url=f"http://127.0.0.1:{colors[color].port}/health")
        bg.deploy("api", color, port=colors[color].port, check=check)
    return bg


def _fetch_through(resolver: ServiceDiscovery):
    def fetch() -> str:
        _, port = resolver.get_service_address("api")
        return get(port)

    return fetch


def test_resolvers_follow_a_cutover_and_a_rollback(store_url, colors, tmp_path):
    store = open_store(store_url)
    resolvers = [
        ServiceDiscovery(store_url, settings=SETTINGS, cache_file=str(tmp_path / f"cache-{i}.json"))
        for i in range(RESOLVERS)
    ]
    clients: list[Client] = []
    try:
        bg = _deploy(store, colors)
        for r in resolvers:
            r.refresh()  # the deploy is seen before the clients start
        clients = [Client(_fetch_through(r)).start() for r in resolvers]
        for c in clients:
            c.wait_for("blue")
        result = bg.cutover("api", to="green", min_healthy=0.5, drain=0.5)
        for c in clients:
            c.wait_for("green")
        to_green = [c.first_since("green", result.flipped_at) - result.flipped_at for c in clients]
        back = bg.rollback("api", drain=0.5)
        for c in clients:
            c.wait_for("blue")
        to_blue = [c.first_since("blue", back.flipped_at) - back.flipped_at for c in clients]
    finally:
        for c in clients:
            c.finish()
        for r in resolvers:
            r.close()
        store.close()
    assert [c.failures for c in clients] == [[]] * RESOLVERS
    assert all({"blue", "green"} <= {body for _, body in c.answers} for c in clients)
    scheme = store_url.split(":", 1)[0]
    print(
        f"\n{scheme}: flip -> every resolver green: median {statistics.median(to_green) * 1000:.1f} ms, "
        f"max {max(to_green) * 1000:.1f} ms; rollback -> blue: max {max(to_blue) * 1000:.1f} ms"
    )


def test_a_named_color_resolves_for_smoke_tests(store_url, colors, tmp_path):
    with open_store(store_url) as store:
        _deploy(store, colors)
        with ServiceDiscovery(
            store, settings=SETTINGS, cache_file=str(tmp_path / "c.json"), watch=False
        ) as d:
            blue, green = colors["blue"].port, colors["green"].port
            assert d.get_service_url("api") == f"http://127.0.0.1:{blue}"
            assert d.get_service_url("api", color="green") == f"http://127.0.0.1:{green}"
            assert d.get_service_address("api", color="blue") == ("127.0.0.1", blue)
            assert d.get_service_url("api", color="green", scheme="grpc") == f"grpc://127.0.0.1:{green}"
            set_default(d)
            try:
                assert get_service_url("api", color="green") == f"http://127.0.0.1:{green}"
            finally:
                set_default(None)


def test_color_lookups_say_what_is_wrong(colors, tmp_path):
    with open_store(f"file://{tmp_path / 'store.json'}") as store:
        bg = BlueGreen(store, SETTINGS)
        bg.deploy("api", "blue", port=colors["blue"].port, check=CheckSpec("none"))
        colors["green"].health = "failing"
        check = CheckSpec("http", url=f"http://127.0.0.1:{colors['green'].port}/health")
        bg.deploy("api", "green", port=colors["green"].port, check=check)
        with ServiceDiscovery(
            store, settings=SETTINGS, cache_file=str(tmp_path / "c.json"), watch=False
        ) as d:
            with pytest.raises(InvalidInput, match="color: 'red' is not valid; expected blue or green"):
                d.get_service_url("api", color="red")
            with pytest.raises(ServiceNotFound, match="healthy in color green"):
                d.get_service_url("api", color="green")
            assert d.get_service_url("api", color="green", healthy_only=False).endswith(
                f":{colors['green'].port}"
            )
            with pytest.raises(ServiceNotFound, match="not deployed in color blue"):
                d.get_service_url("web", color="blue")


def test_a_service_without_blue_green_resolves_as_before(colors, tmp_path):
    with open_store(f"file://{tmp_path / 'store.json'}") as store:
        _deploy(store, colors)
        Registry(store, SETTINGS).register("web", port=colors["green"].port, check=CheckSpec("none"))
        with ServiceDiscovery(
            store, settings=SETTINGS, cache_file=str(tmp_path / "c.json"), watch=False
        ) as d:
            assert d.get_service_url("web") == f"http://127.0.0.1:{colors['green'].port}"
            assert d.get_all_services()["api"] == f"http://127.0.0.1:{colors['blue'].port}"


def test_a_resolver_started_before_the_first_deploy_sees_the_color_go_live(colors, tmp_path):
    url = f"file://{tmp_path / 'store.json'}"
    with (
        open_store(url) as store,
        ServiceDiscovery(url, settings=SETTINGS, cache_file=str(tmp_path / "c.json")) as d,
    ):
        _deploy(store, colors)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                assert d.get_service_url("api") == f"http://127.0.0.1:{colors['blue'].port}"
                break
            except ServiceNotFound:
                time.sleep(0.01)
        else:
            pytest.fail("the resolver did not follow the first deploy")


def _counting(store):
    """The real store, its reads recorded: the keys each snapshot_many call returned."""
    calls: list[list[str]] = []
    real = store.snapshot_many

    def snapshot_many(prefixes):
        found, position = real(prefixes)
        calls.append([e.key for e in found])
        return found, position

    store.snapshot_many = snapshot_many
    return calls


def test_a_resolver_for_one_name_reads_only_that_names_keys(store_url, colors, tmp_path):
    with open_store(store_url) as store:
        registry = Registry(store, SETTINGS)
        for n in range(30):  # other services, one of them a prefix's neighbour of api
            registry.register(f"svc-{n}", address="127.0.0.1", port=20000 + n, check=CheckSpec("none"))
        registry.register("api-v2", address="127.0.0.1", port=21000, check=CheckSpec("none"))
        _deploy(store, colors)
        BlueGreen(store, SETTINGS).cutover("api", to="green", min_healthy=0, drain=0)
        calls = _counting(store)
        with ServiceDiscovery(
            store, settings=SETTINGS, cache_file=str(tmp_path / "c.json"), watch=False, only=["api"]
        ) as d:
            assert d.get_service_url("api") == f"http://127.0.0.1:{colors['green'].port}"
            assert d.get_service_url("api", color="blue") == f"http://127.0.0.1:{colors['blue'].port}"
            with pytest.raises(InvalidInput, match="svc-1"):
                d.get_service_url("svc-1")
        assert len(calls) == 1, "one read, in one request where the store can"
        assert calls[0], "it read api's keys"
        read = calls[0]
        assert not [k for k in read if "svc-" in k], "no other service's keys"
        assert not [k for k in read if k.startswith("registry/production/api-v2/")]
        assert {k for k in read if k.startswith("registry/")} == {
            e.key for e in store.list("registry/production/api/")
        }


def test_a_resolver_for_one_name_still_names_the_known_ones_when_it_is_missing(store_url, tmp_path):
    with open_store(store_url) as store:
        Registry(store, SETTINGS).register("redis", address="127.0.0.1", port=20001, check=CheckSpec("none"))
        with (
            ServiceDiscovery(
                store, settings=SETTINGS, cache_file=str(tmp_path / "c.json"), watch=False, only=["cache"]
            ) as d,
            pytest.raises(ServiceNotFound, match="redis"),
        ):
            d.get_service_url("cache")


def test_a_resolver_for_one_name_gives_what_a_whole_resolver_gives(store_url, colors, tmp_path, monkeypatch):
    with open_store(store_url) as store:
        registry = Registry(store, SETTINGS)
        registry.register(
            "web", address="0.0.0.0", port=20002, check=CheckSpec("none"), meta={"scheme": "https"}
        )
        _deploy(store, colors)
        monkeypatch.setenv("PORTCTL_DB_URL", "postgresql://db.internal:6432")
        with ServiceDiscovery(
            store, settings=SETTINGS, cache_file=str(tmp_path / "w.json"), watch=False
        ) as whole:
            for name in ("web", "api", "db"):
                with ServiceDiscovery(
                    store, settings=SETTINGS, cache_file=str(tmp_path / "o.json"), watch=False, only=[name]
                ) as one:
                    assert one.get_service_url(name) == whole.get_service_url(name)
