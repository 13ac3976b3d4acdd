"""A three-member etcd cluster on loopback, its leader killed while allocators race.

Four processes allocate 200 services each while the leader is killed and restarted. Every
allocation must succeed exactly once or fail with a retryable error (the worker then retries,
as a user would); afterwards no port is held twice and nothing is lost. A resolver keeps
answering through the election, from its last known good view if it must.
"""

from __future__ import annotations

import collections
import multiprocessing
import threading
import time

from portctl.backends import open_store
from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery
from portctl.registry.entries import CheckSpec, Registry

WORKERS = 4
PER_WORKER = 200
HOST = "cluster-host"


def allocate_through_faults(url: str, worker: int, count: int, start, progress) -> dict[str, object]:
    """Allocate ``count`` services; retry each after a retryable error. Runs in a child process."""
    from portctl.errors import PortctlError, StoreUnavailable
    from portctl.ports.allocator import PortAllocator

    store = open_store(url)
    allocator = PortAllocator(store, Settings(host=HOST))
    told: dict[str, int] = {}
    retryable: list[str] = []
    other: list[str] = []
    start.wait(timeout=60)
    for i in range(count):
        name = f"w{worker}-{i}"
        for _ in range(200):
            try:
                told[name] = allocator.allocate(name, type="dynamic").allocation.port
                break
            except StoreUnavailable as e:
                retryable.append(str(e))
                time.sleep(0.05)
            except PortctlError as e:
                other.append(f"{name}: {type(e).__name__}: {e}")
                break
        progress.append(worker)
    store.close()
    return {"told": told, "retryable": retryable, "other": other}


def race_and_kill_the_leader(etcd_cluster, url: str) -> tuple[list[dict[str, object]], int]:
    """Start the allocators; a quarter of the way in, kill the leader; restart it 2 s later."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        progress = manager.list()  # one item per finished allocation, shared with the workers
        with ctx.Pool(WORKERS) as pool:
            pending = [
                pool.apply_async(allocate_through_faults, (url, w, PER_WORKER, start, progress))
                for w in range(WORKERS)
            ]
            time.sleep(1.0)
            start.set()
            deadline = time.monotonic() + 300
            while len(progress) < WORKERS * PER_WORKER // 4 and time.monotonic() < deadline:
                failed = [p for p in pending if p.ready() and not p.successful()]
                if failed:
                    failed[0].get()  # raises the worker's error
                time.sleep(0.05)
            leader = etcd_cluster.leader()
            leader.kill()
            killed_at = len(progress)
            time.sleep(2.0)
            etcd_cluster.restart(leader)
            return [p.get(timeout=600) for p in pending], killed_at


def test_leader_killed_during_an_allocation_race_loses_and_doubles_nothing(etcd_cluster, tmp_path):
    url = etcd_cluster.url()
    with open_store(url) as store:
        Registry(store, Settings(host=HOST)).register("api", port=18080, check=CheckSpec("none"))
    resolver = ServiceDiscovery(url, settings=Settings(host=HOST), cache_file=str(tmp_path / "cache.json"))
    answers: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    stop = threading.Event()

    def resolve_all_along():
        while not stop.is_set():
            try:
                answers[resolver.get_service_url("api")] += 1
            except Exception as e:
                failures.append(repr(e))
            time.sleep(0.005)

    reader = threading.Thread(target=resolve_all_along, daemon=True)
    reader.start()
    try:
        results, killed_at = race_and_kill_the_leader(etcd_cluster, url)
    finally:
        stop.set()
        reader.join()
        resolver.close()

    told = {name: port for r in results for name, port in r["told"].items()}
    assert [r["other"] for r in results] == [[]] * WORKERS
    assert killed_at < WORKERS * PER_WORKER  # the kill happened while allocations were running
    assert len(told) == WORKERS * PER_WORKER  # every allocation succeeded in the end
    doubled = [p for p, n in collections.Counter(told.values()).items() if n > 1]
    assert doubled == []
    with open_store(url) as store:
        records = store.list(f"allocations/{HOST}/production/")
        claims = store.list(f"ports/{HOST}/tcp/")
    assert len(records) == len(claims) == WORKERS * PER_WORKER  # nothing lost, nothing extra
    recorded = {r.key.rsplit("/", 1)[1]: r for r in records}
    for name, port in told.items():
        assert f'"port": {port}' in recorded[name].value  # what each caller was told is what is stored
    assert failures == []  # discovery kept answering through the election
    assert set(answers) == {"http://127.0.0.1:18080"}
    retries = sum(len(r["retryable"]) for r in results)
    print(
        f"\nkill after {killed_at} allocations; {retries} retryable errors; {sum(answers.values())} answers"
    )
