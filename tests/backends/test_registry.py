"""Stores are chosen by URL scheme; plugins register under the ``portctl.stores`` entry points."""

from __future__ import annotations

import sys

import pytest

from portctl.backends import Capability, known_schemes, open_store
from portctl.backends.file import JsonFileStore
from portctl.errors import CapabilityMissing, InvalidInput

PLUGIN = """
from portctl.backends.file import JsonFileStore

class MemoryishStore(JsonFileStore):
    scheme = "plugintest"

    @classmethod
    def from_url(cls, url):
        return cls(url.split("://", 1)[1])
"""


def test_file_scheme_opens_the_json_store(tmp_path):
    assert isinstance(open_store(f"file://{tmp_path}/s.json"), JsonFileStore)


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(InvalidInput, match="one of the schemes .*file"):
        open_store("zookeeper://127.0.0.1:2181")


def test_a_url_without_scheme_is_refused():
    with pytest.raises(InvalidInput, match="store URL such as file:///"):
        open_store("127.0.0.1:2379")


def test_missing_capability_fails_before_connecting(tmp_path):
    with pytest.raises(CapabilityMissing, match="multi-host"):
        open_store(f"file://{tmp_path}/s.json", require=Capability.CAS | Capability.MULTI_HOST)
    assert not (tmp_path / "s.json").exists()


def test_third_party_store_registers_by_entry_point(tmp_path, monkeypatch):
    (tmp_path / "plugin_store.py").write_text(PLUGIN)
    dist = tmp_path / "plugin_store-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-store\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[portctl.stores]\nplugintest = plugin_store:MemoryishStore\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugintest" in known_schemes()
    store = open_store(f"plugintest://{tmp_path}/p.json")
    assert type(store).__name__ == "MemoryishStore"
    store.create("a", "1")
    assert store.get("a").value == "1"
    sys.modules.pop("plugin_store", None)
