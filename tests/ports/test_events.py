"""The event log in a real JSON store: kept in order, pruned to its limit, corrupt keys skipped."""

from __future__ import annotations

from portctl.keys import event_key
from portctl.ports.events import EventLog
from portctl.records import Event


def moved(at: float, service: str = "api", env: str = "production") -> Event:
    return Event("moved", at, "ignored", "portctl resolve", env, service, "tcp", 8000, 8001, "process x")


def test_events_read_back_oldest_first_with_their_host(store):
    log = EventLog(store, "web-1")
    log.record(moved(20.0))
    log.record(moved(10.0, "redis"))
    found = log.read().events
    assert [(e.service, e.at, e.host) for e in found] == [("redis", 10.0, "web-1"), ("api", 20.0, "web-1")]
    assert found[0].to_dict()["at"] == "1970-01-01T00:00:10.000Z"


def test_filters_and_other_hosts(store):
    EventLog(store, "web-1").record(moved(1.0))
    EventLog(store, "web-2").record(moved(2.0, "redis", "staging"))
    log = EventLog(store, "web-1")
    assert [e.service for e in log.read().events] == ["api"]
    assert [e.service for e in log.read(all_hosts=True).events] == ["api", "redis"]
    assert [e.service for e in log.read(all_hosts=True, environment="staging").events] == ["redis"]
    assert [e.service for e in log.read(all_hosts=True, since=1.5).events] == ["redis"]
    assert log.read(service="redis").events == []


def test_a_host_keeps_its_newest_events_only(store):
    log = EventLog(store, "web-1", keep=3)
    for at in range(5):
        log.record(moved(float(at)))
    assert [e.at for e in log.read().events] == [2.0, 3.0, 4.0]


def test_a_corrupt_event_key_is_skipped_and_named(store):
    log = EventLog(store, "web-1")
    log.record(moved(1.0))
    bad = event_key("web-1", 5, "0badc0de")
    store.create(
        bad, '{"format": "portctl-event", "kind": "moved", "at": 5, "host": "web-1", "new_port": 70000}'
    )
    found = log.read()
    assert [e.at for e in found.events] == [1.0]
    assert found.corrupt == [bad]
