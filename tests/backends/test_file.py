"""The JSON-file store: the shared contract, then what only a file can get wrong."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from portctl.backends import file as file_store
from portctl.backends import open_store
from portctl.backends.file import JsonFileStore
from portctl.errors import InvalidInput, StoreCorrupt, StoreTimeout, StoreUnavailable
from portctl.testing import StoreContract


class TestJsonFileStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path):
        return f"file://{tmp_path}/store.json"


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "store.json")


@pytest.fixture
def store(path):
    with JsonFileStore(path) as s:
        yield s


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_new_store_file_is_owner_writable_only(store, path):
    store.create("a", "1")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & 0o022 == 0
    assert mode & 0o200


def test_store_file_records_schema_and_revision(store, path):
    store.create("a", "1")
    store.create("b", "2")
    doc = json.loads(_bytes(path))
    assert (doc["format"], doc["schema"], doc["revision"]) == ("portctl-store", 1, 2)


def test_each_write_keeps_the_previous_file_as_backup(store, path):
    store.create("a", "1")
    first = _bytes(path)
    store.create("b", "2")
    assert _bytes(path + ".bak") == first


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b'{"format": "portctl-store", "schema": 1, "revis', "not valid JSON"),
        (b"not json at all", "not valid JSON"),
        (b'{"some": "other file"}', "not a portctl store"),
        (b'{"format": "portctl-store", "schema": 1}', "lacks revision"),
    ],
)
def test_corrupt_file_is_refused_and_left_untouched(path, content, problem):
    with JsonFileStore(path) as good:
        good.create("a", "1")
        good.create("b", "2")  # now a .bak exists
    with open(path, "wb") as f:
        f.write(content)
    store = JsonFileStore(path)
    for attempt in (lambda: store.get("a"), lambda: store.create("c", "3"), lambda: store.list("")):
        with pytest.raises(StoreCorrupt) as err:
            attempt()
        assert problem in str(err.value)
        assert f"{path}.bak" in str(err.value)
    assert _bytes(path) == content


def test_newer_schema_is_refused_with_upgrade_advice(path):
    content = json.dumps({"format": "portctl-store", "schema": 99, "revision": 1}).encode()
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(StoreCorrupt, match="newer portctl.*upgrade portctl"):
        JsonFileStore(path).create("a", "1")
    assert _bytes(path) == content


def test_unchanged_file_is_not_parsed_again(store, path, monkeypatch):
    store.create("a", "1")
    reader = JsonFileStore(path)
    calls = []
    real = file_store.parse_document
    monkeypatch.setattr(file_store, "parse_document", lambda *a: calls.append(1) or real(*a))
    for _ in range(50):
        reader.get("a")
        reader.list("")
    assert len(calls) == 1
    store.create("b", "2")
    assert reader.get("b") is not None
    assert len(calls) == 2


def test_missing_folder_is_refused_naming_it(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(InvalidInput, match=f"{missing} does not exist"):
        open_store(f"file://{missing}/store.json")


def test_lock_held_too_long_times_out_naming_the_lock(path):
    store = JsonFileStore(path, lock_timeout=0.3)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreTimeout, match="locked by another process"):
            store.create("a", "1")
    finally:
        os.close(fd)
    store.create("a", "1")


def test_watch_from_a_compacted_position_asks_for_a_reread(store):
    position = store.position()
    for i in range(file_store.TOMBSTONES + 5):
        store.create(f"k/{i}", "x")
        store.delete(f"k/{i}")
    batch = store.watch("k/", position, timeout=0.1)
    assert batch.reset


def test_watch_after_the_file_went_back_in_time_asks_for_a_reread(store, path):
    store.create("a", "1")
    older = _bytes(path)
    store.create("b", "2")
    position = store.position()
    with open(path, "wb") as f:  # an administrator restored an older copy
        f.write(older)
    assert store.watch("", position, timeout=0.1).reset


def test_expired_entry_shows_as_delete_in_the_change_feed(store):
    store.create("t/a", "x", ttl=0.2)
    position = store.position()
    batch = store.watch("t/", position, timeout=3)
    assert [(c.kind, c.key) for c in batch.changes] == [("delete", "t/a")]


def test_file_url_forms(tmp_path):
    assert open_store(f"file://{tmp_path}/s.json").url == f"file://{tmp_path}/s.json"
    assert open_store(f"file://localhost{tmp_path}/s.json").url == f"file://{tmp_path}/s.json"
    with pytest.raises(InvalidInput, match="file:///absolute/path"):
        open_store(f"file://otherhost{tmp_path}/s.json")


def test_folder_as_store_path_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="a file path, not a folder"):
        open_store(f"file://{tmp_path}")


def test_a_file_that_vanishes_under_a_reader_is_an_outage_not_an_empty_store(store, path):
    store.create("a", "1")
    os.rename(path, path + ".away")
    with pytest.raises(StoreUnavailable, match="disappeared .*restore it"):
        store.get("a")
    assert JsonFileStore(path).list("") == []  # a new process starts an empty store
    os.rename(path + ".away", path)
    assert store.get("a").value == "1"


# Writers killed mid-write --------------------------------------------------------------

# A writer that stops itself at its first fsync: its temp file is fully written, not renamed.
PAUSING_WRITER = """
import os, signal, sys
from portctl.backends.file import JsonFileStore

real_fsync = os.fsync
def pause_then_fsync(fd):
    os.fsync = real_fsync
    os.kill(os.getpid(), signal.SIGSTOP)
    real_fsync(fd)
os.fsync = pause_then_fsync
JsonFileStore(sys.argv[1]).create(sys.argv[2], "x")
"""


def _paused_writer(path, key):
    """A real writer process, stopped mid-write while holding the lock."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_WRITER, path, key])
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status
    return proc


def _temps(path):
    folder, name = os.path.split(path)
    return sorted(n for n in os.listdir(folder) if n.startswith(name) and n.endswith(".tmp"))


def test_temp_files_of_writers_killed_mid_write_are_removed_by_the_next_writer(store, path):
    store.create("a", "1")
    left = set()
    for i in range(5):
        proc = _paused_writer(path, f"killed/{i}")
        left |= set(_temps(path))
        proc.kill()
        proc.wait()
    assert len(left) == 5  # each writer had its own temp file when it was killed
    assert _temps(path)  # the last one is still there
    before, temps = _bytes(path), _temps(path)
    with JsonFileStore(path) as later:
        assert later.get("a").value == "1"  # readers never remove anything
        assert _temps(path) == temps
        assert _bytes(path) == before
        later.create("b", "2")
    assert _temps(path) == []
    assert [e.key for e in JsonFileStore(path).list("")] == ["a", "b"]


def test_a_live_writers_temp_file_is_never_removed(store, path):
    store.create("a", "1")
    proc = _paused_writer(path, "live")
    try:
        [temp] = _temps(path)
        assert temp == f"store.json.{proc.pid}." + temp.split(".")[3] + ".tmp"
        with pytest.raises(StoreTimeout):
            JsonFileStore(path, lock_timeout=0.3).create("b", "2")
        assert _temps(path) == [temp]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=30) == 0
    assert JsonFileStore(path).get("live").value == "x"  # its write went through
    assert _temps(path) == []


def test_files_that_only_look_like_temp_files_are_kept(store, path):
    kept = [f"{path}.mine.tmp", f"{path}.1.tmp", f"{path}.bak"]
    for name in kept:
        with open(name, "w") as f:
            f.write("someone else's")
    JsonFileStore(path).create("a", "1")
    for name in kept:
        assert os.path.exists(name), name


# Files that are not what their names say ------------------------------------------------


def test_deeply_nested_store_file_is_refused_untouched(path):
    with open(path, "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    store = JsonFileStore(path)
    for attempt in (lambda: store.get("a"), lambda: store.create("c", "3"), lambda: store.list("")):
        with pytest.raises(StoreCorrupt, match="nests JSON deeper"):
            attempt()
    assert _bytes(path) == b"[" * 100_000 + b"]" * 100_000
