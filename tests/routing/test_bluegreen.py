"""The blue-green library on the JSON store, against real HTTP backends: deploy, a health-gated
cutover, rollback, the history, and the refusals that leave the store as it was."""

from __future__ import annotations

import threading

import pytest

from portctl.backends.base import Capability
from portctl.backends.file import JsonFileStore
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery
from portctl.errors import CapabilityMissing, InvalidInput
from portctl.records import HISTORY_LIMIT
from portctl.registry.entries import CheckSpec, Registry
from portctl.registry.health import run_check
from portctl.routing.bluegreen import BlueGreen, CutoverConflict, CutoverRefused

SETTINGS = Settings(host="test-host")


def http_check(server) -> CheckSpec:
    return CheckSpec("http", url=f"http://127.0.0.1:{server.port}/health", timeout=1.0)


@pytest.fixture
def bg(store) -> BlueGreen:
    return BlueGreen(store, SETTINGS)


@pytest.fixture
def deployed(bg, colors):
    for color in ("blue", "green"):
        bg.deploy("api", color, port=colors[color].port, check=http_check(colors[color]))
    return bg


def _bytes(store: JsonFileStore) -> bytes:
    with open(store.path, "rb") as f:
        return f.read()


def test_the_first_color_goes_live_and_the_second_waits(bg, colors):
    first = bg.deploy("api", "blue", port=colors["blue"].port, check=http_check(colors["blue"]))
    second = bg.deploy("api", "green", port=colors["green"].port, check=http_check(colors["green"]))
    assert (first.live, second.live) == (True, False)
    status = bg.status("api")
    assert status.live == "blue"
    assert [(c.color, c.state, c.port) for c in status.colors] == [
        ("blue", "live", colors["blue"].port),
        ("green", "idle", colors["green"].port),
    ]
    assert status.pointer is not None
    assert status.pointer.history == ()


def test_deploying_over_the_live_color_is_refused(deployed, colors, store):
    before = _bytes(store)
    with pytest.raises(CutoverRefused, match="blue is the live color of api"):
        deployed.deploy("api", "blue", port=colors["blue"].port)
    assert _bytes(store) == before


def test_cutover_flips_the_pointer_and_keeps_the_old_color(deployed, store):
    result = deployed.cutover("api", min_healthy=0.3, drain=0, actor="alice@web-1")
    assert (result.from_color, result.to_color, result.kind) == ("blue", "green", "cutover")
    assert result.probes >= 2
    status = deployed.status("api")
    assert status.live == "green"
    assert [c.state for c in status.colors] == ["idle", "live"]
    assert all(c.instances for c in status.colors)  # blue stays registered
    flip = status.pointer.history[-1]
    assert (flip.actor, flip.from_color, flip.to_color) == ("alice@web-1", "blue", "green")


def test_the_drain_is_reported_while_it_lasts(deployed, store):
    stop = threading.Event()
    slow = BlueGreen(store, SETTINGS, stop=stop)
    done: list = []
    thread = threading.Thread(target=lambda: done.append(slow.cutover("api", min_healthy=0, drain=60)))
    thread.start()
    try:
        for _ in range(500):
            if deployed.status("api").live == "green":
                break
            threading.Event().wait(0.01)
        assert [c.state for c in deployed.status("api").colors] == ["draining", "live"]
    finally:
        stop.set()
        thread.join(10)
    assert done[0].drained is False  # interrupted: the flip stands
    assert deployed.status("api").live == "green"


def test_a_flapping_target_is_refused_and_nothing_changes(deployed, colors, store):
    colors["green"].health = "flapping"
    before = _bytes(store)
    with pytest.raises(CutoverRefused, match=r"api-green-test-host failed its check .* healthy window"):
        deployed.cutover("api", to="green", min_healthy=1.0, drain=0)
    assert _bytes(store) == before
    assert deployed.status("api").live == "blue"


def test_an_unhealthy_target_is_refused(deployed, colors, store):
    colors["green"].health = "failing"
    before = _bytes(store)
    with pytest.raises(CutoverRefused, match="HTTP 503"):
        deployed.cutover("api", min_healthy=0, drain=0)
    assert _bytes(store) == before


def test_a_target_that_is_not_deployed_or_already_live_is_refused(bg, colors, store):
    bg.deploy("api", "blue", port=colors["blue"].port, check=http_check(colors["blue"]))
    before = _bytes(store)
    with pytest.raises(
        CutoverRefused, match=r"green of api is not deployed .* portctl bluegreen deploy api --color green"
    ):
        bg.cutover("api", to="green", min_healthy=0, drain=0)
    with pytest.raises(CutoverRefused, match="blue is already the live color"):
        bg.cutover("api", to="blue", min_healthy=0, drain=0)
    with pytest.raises(InvalidInput, match=r"^to: 'red' is not valid; expected blue or green"):
        bg.cutover("api", to="red", min_healthy=0, drain=0)
    assert _bytes(store) == before


def test_rollback_is_one_flip_back_and_needs_history(deployed, store):
    before = _bytes(store)
    with pytest.raises(CutoverRefused, match="no cutover to roll back"):
        deployed.rollback("api", drain=0)
    assert _bytes(store) == before
    deployed.cutover("api", min_healthy=0, drain=0)
    back = deployed.rollback("api", drain=0)
    assert (back.from_color, back.to_color, back.kind) == ("green", "blue", "rollback")
    assert [f.kind for f in deployed.status("api").pointer.history] == ["cutover", "rollback"]


def test_history_keeps_the_last_twenty(deployed):
    for _ in range(HISTORY_LIMIT + 5):
        deployed.cutover("api", min_healthy=0, drain=0)
    history = deployed.status("api").pointer.history
    assert len(history) == HISTORY_LIMIT
    # 25 flips from blue alternate green, blue, ...: the first five are gone, the 25th is kept
    assert [f.to_color for f in history[:2]] == ["blue", "green"]
    assert history[-1].to_color == "green"
    assert history[0].at > 0


def test_two_racing_cutovers_one_wins(deployed, store):
    """Two cutovers that read the same pointer: exactly one compare-and-set lands."""
    results: list[object] = []
    start = threading.Barrier(2)

    def attempt() -> None:
        with JsonFileStore(store.path) as own:
            racer = BlueGreen(own, SETTINGS)
            start.wait()
            try:
                results.append(racer.cutover("api", to="green", min_healthy=0.5, drain=0))
            except (CutoverConflict, CutoverRefused) as e:
                results.append(e)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], CutoverConflict)
    assert "lost: another cutover changed the live color" in str(losers[0])
    assert len(deployed.status("api").pointer.history) == 1


def test_a_store_without_compare_and_set_is_refused_before_anything_is_read(tmp_path):
    class NoCas(JsonFileStore):
        capabilities = Capability.WATCH

    with (
        NoCas(str(tmp_path / "s.json")) as weak,
        pytest.raises(
            CapabilityMissing, match="supports cas .blue-green writes its live pointer with compare-and-set"
        ),
    ):
        BlueGreen(weak, SETTINGS)


def test_flap_damping_needs_a_window_long_enough(bg, colors):
    damped = CheckSpec(
        "http", url=f"http://127.0.0.1:{colors['green'].port}/health", successes_before_passing=3
    )
    bg.deploy("api", "blue", port=colors["blue"].port, check=http_check(colors["blue"]))
    colors["green"].health = "failing"
    bg.deploy("api", "green", port=colors["green"].port, check=damped)  # registers critical
    colors["green"].health = "ok"
    with pytest.raises(CutoverRefused, match="needs 3 passing checks in a row"):
        bg.cutover("api", min_healthy=0, drain=0)
    assert bg.cutover("api", min_healthy=0.3, drain=0).to_color == "green"


def test_a_service_adopting_blue_green_keeps_its_plain_instances_until_the_first_cutover(
    store, bg, colors, tmp_path
):
    plain = colors["blue"]  # stands in for the service before blue-green
    Registry(store, SETTINGS).register("web", port=plain.port, check=CheckSpec("none"))
    deployed = bg.deploy("web", "green", port=colors["green"].port, check=http_check(colors["green"]))
    assert deployed.live is False
    with ServiceDiscovery(store, settings=SETTINGS, cache_file=str(tmp_path / "c.json"), watch=False) as d:
        assert d.get_service_url("web") == f"http://127.0.0.1:{plain.port}"
        bg.cutover("web", to="green", min_healthy=0, drain=0)
        d.refresh()
        assert d.get_service_url("web") == f"http://127.0.0.1:{colors['green'].port}"
        bg.rollback("web", drain=0)
        d.refresh()
        assert d.get_service_url("web") == f"http://127.0.0.1:{plain.port}"


def test_a_redeploy_racing_a_cutover_to_that_color_registers_nothing(deployed, colors, store):
    """A cutover to green lands while green is being redeployed on another port: the redeploy
    must not then change, ungated, what now serves."""
    racer = BlueGreen(store, SETTINGS)

    def probe_while_a_cutover_lands(entry):  # runs inside register(), before its write
        racer.cutover("api", to="green", min_healthy=0, drain=0)
        return run_check(entry)

    redeploy = BlueGreen(store, SETTINGS, probe=probe_while_a_cutover_lands)
    with pytest.raises(
        CutoverRefused, match="green went live for api in production while it was being deployed"
    ):
        redeploy.deploy("api", "green", port=colors["green"].port + 1, check=CheckSpec("tcp"))
    status = deployed.status("api")
    assert status.live == "green"
    assert [(c.color, c.port) for c in status.colors] == [
        ("blue", colors["blue"].port),
        ("green", colors["green"].port),  # still the instance the cutover checked
    ]


def test_colors_deployed_at_once_both_register_and_the_first_goes_live(bg, colors, store):
    """Blue goes live while green is being deployed: only a change to green itself may refuse
    green, so green registers (idle) against the new pointer."""
    other = BlueGreen(store, SETTINGS)

    def probe_while_blue_deploys(entry):  # green's registration probes; blue lands meanwhile
        if other.pointer("api") is None:
            other.deploy("api", "blue", port=colors["blue"].port, check=http_check(colors["blue"]))
        return run_check(entry)

    green = BlueGreen(store, SETTINGS, probe=probe_while_blue_deploys).deploy(
        "api", "green", port=colors["green"].port, check=http_check(colors["green"])
    )
    assert green.live is False
    status = bg.status("api")
    assert status.live == "blue"
    assert [(c.color, c.state) for c in status.colors] == [("blue", "live"), ("green", "idle")]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda bg: bg.deploy("api", "red", port=7321), "color"),
        (lambda bg: bg.deploy("api", "blue", port=7321, address=""), "address"),
        (
            lambda bg: bg.deploy(
                "api", "blue", port=7321, check=CheckSpec("http", url="http://127.0.0.1:1/")
            ),
            "check",
        ),
        (lambda bg: bg.cutover("api", to="red"), "to"),
        (lambda bg: bg.cutover("api"), "to"),  # no color is live yet: name one
        (lambda bg: bg.cutover("api", to="green", min_healthy=-1), "min_healthy"),
        (lambda bg: bg.cutover("api", to="green", drain=25 * 3600), "drain"),
        (lambda bg: bg.rollback("api", drain=-1), "drain"),
    ],
)
def test_library_errors_name_the_python_parameter(bg, store, call, field):
    """The CLI maps a parameter to its flag; the library names the parameter, not a flag."""
    with pytest.raises(InvalidInput) as raised:
        call(bg)
    assert raised.value.field == field
    assert store.list("") == []
