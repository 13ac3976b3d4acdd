"""The last-known-good cache file: kept only by resolvers that live, pruned when old, and
never a reason for discovery to fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from portctl.config.settings import Settings
from portctl.discovery import ServiceDiscovery, _cache
from portctl.errors import StoreUnavailable
from portctl.ports.allocator import PortAllocator
from tests.conftest import free_port

SETTINGS = Settings(host="test-host")
DAY = 86400.0


@pytest.fixture(autouse=True)
def _cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PORTCTL_ENV", raising=False)


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "xdg" / "portctl"


@pytest.fixture
def port(store) -> int:
    port = free_port(start=25400)
    PortAllocator(store, SETTINGS).allocate("svc", port=port)
    return port


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _corrupt(store) -> None:
    with open(store.path, "wb") as f:
        f.write(b"{ not json")


def test_a_one_shot_resolver_reads_but_does_not_write_the_cache(store, port, folder):
    with ServiceDiscovery(store, settings=SETTINGS, watch=False) as once:
        assert once.get_service_url("svc") == f"http://127.0.0.1:{port}"
    assert _files(folder) == []


def test_a_one_shot_resolver_serves_a_cache_a_living_one_wrote(store, port, folder):
    with ServiceDiscovery(store, settings=SETTINGS):
        pass
    assert len(_files(folder)) == 1
    _corrupt(store)
    with ServiceDiscovery(store, settings=SETTINGS, watch=False) as once:
        assert once.stale is not None
        assert once.get_service_url("svc") == f"http://127.0.0.1:{port}"


def test_save_cache_true_makes_a_one_shot_resolver_save(store, port, folder):
    with ServiceDiscovery(store, settings=SETTINGS, watch=False, save_cache=True):
        pass
    assert len(_files(folder)) == 1


def test_cache_files_unused_for_a_week_are_pruned_when_a_resolver_saves(store, port, folder):
    folder.mkdir(parents=True)
    now = time.time()
    ages = {"discovery-0123456789ab.json": 8 * DAY, "discovery-ba9876543210.json": 1 * DAY}
    for name, age in ages.items():
        (folder / name).write_text("{}")
        os.utime(folder / name, (now - age, now - age))
    (folder / "notes.txt").write_text("not ours")
    os.utime(folder / "notes.txt", (now - 30 * DAY, now - 30 * DAY))
    with ServiceDiscovery(store, settings=SETTINGS) as resolver:
        mine = os.path.basename(resolver.cache_file or "")
    assert _files(folder) == sorted([mine, "discovery-ba9876543210.json", "notes.txt"])


def test_a_home_that_does_not_exist_is_not_created(store, port, tmp_path, monkeypatch):
    home = tmp_path / "no" / "home"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(home))
    with ServiceDiscovery(store, settings=SETTINGS) as resolver:
        assert resolver.cache_file is None
        assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"
    assert not (tmp_path / "no").exists()
    _corrupt(store)
    with pytest.raises(StoreUnavailable, match="no cache of last known good answers is kept"):
        ServiceDiscovery(store, settings=SETTINGS)


def test_a_relative_xdg_cache_home_is_ignored(store, port, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with ServiceDiscovery(store, settings=SETTINGS) as resolver:
        assert resolver.cache_file is not None
        assert resolver.cache_file.startswith(str(tmp_path / "home" / ".cache" / "portctl"))
    assert not (tmp_path / "relative").exists()


@pytest.mark.parametrize(
    "content",
    [b"[" * 200_000, b"{ not json", b'{"format": "portctl-discovery-cache"}'],
    ids=["deep", "junk", "shape"],
)
def test_an_unusable_cache_file_is_no_last_known_good(store, port, tmp_path, content):
    cache = tmp_path / "cache.json"
    cache.write_bytes(content)
    _corrupt(store)
    with pytest.raises(StoreUnavailable, match="no last known good answer"):
        ServiceDiscovery(store, settings=SETTINGS, cache_file=str(cache))
    assert cache.read_bytes() == content


def test_a_named_pipe_as_the_cache_file_neither_hangs_nor_breaks(store, port, tmp_path):
    cache = tmp_path / "cache.json"
    os.mkfifo(cache)
    good = Path(store.path).read_bytes()
    _corrupt(store)
    with pytest.raises(StoreUnavailable, match="no last known good answer"):
        ServiceDiscovery(store, settings=SETTINGS, cache_file=str(cache))
    Path(store.path).write_bytes(good)
    with ServiceDiscovery(store, settings=SETTINGS, cache_file=str(cache)) as resolver:
        assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"


def test_a_cache_folder_that_is_a_file_does_not_stop_discovery(store, port, tmp_path, monkeypatch):
    (tmp_path / "xdg").write_text("a file where the cache folder would be")
    with ServiceDiscovery(store, settings=SETTINGS) as resolver:
        assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"
        resolver.refresh()


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only mount needs root and mount(8) (a chmod does not stop root)")
    tried = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {tried.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True, check=False)


def test_a_read_only_cache_home_does_not_stop_discovery(store, port, read_only_folder, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_folder))
    with ServiceDiscovery(store, settings=SETTINGS) as resolver:
        assert resolver.get_service_url("svc") == f"http://127.0.0.1:{port}"
        resolver.refresh()
    assert os.listdir(read_only_folder) == []


def test_save_reports_a_failed_write_instead_of_raising(tmp_path):
    assert _cache.save(str(tmp_path / "file" / "x.json"), {}, [], 0.0)
    assert not _cache.save(str(tmp_path / "file" / "x.json" / "below.json"), {}, [], 0.0)
