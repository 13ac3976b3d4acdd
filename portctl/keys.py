"""The store's key layout: every key portctl writes is built and parsed here, nowhere else."""

from __future__ import annotations

import re

# Allocations and port claims


def allocation_key(host: str, environment: str, service: str) -> str:
    """``allocations/<host>/<environment>/<service>``: one service's allocation on one host."""
    return f"allocations/{host}/{environment}/{service}"


def claim_key(host: str, protocol: str, port: int) -> str:
    """``ports/<host>/<protocol>/<port>``: the claim that keeps a port to one service."""
    return f"ports/{host}/{protocol}/{port}"


def allocations_prefix(host: str | None = None, environment: str | None = None) -> str:
    """Every allocation, one host's, or one host's in one environment."""
    if host is None:
        return "allocations/"
    return f"allocations/{host}/" + (f"{environment}/" if environment is not None else "")


def claims_prefix(host: str, protocol: str) -> str:
    """The claims of one host's ports of one protocol."""
    return f"ports/{host}/{protocol}/"


# Service registrations

REGISTRY_PREFIX = "registry/"
_REGISTRY_KEY = re.compile(r"^registry/([^/]+)/([^/]+)/([^/]+)/(entry|health)$")


def entry_key(environment: str, service: str, instance: str) -> str:
    """``registry/<environment>/<service>/<id>/entry``: an instance's registration."""
    return f"{REGISTRY_PREFIX}{environment}/{service}/{instance}/entry"


def health_key(environment: str, service: str, instance: str) -> str:
    """``registry/<environment>/<service>/<id>/health``: an instance's health."""
    return f"{REGISTRY_PREFIX}{environment}/{service}/{instance}/health"


def registry_prefix(environment: str | None = None, service: str | None = None) -> str:
    """Every registration, one environment's, or one service's in one environment."""
    if environment is None:
        return REGISTRY_PREFIX
    return f"{REGISTRY_PREFIX}{environment}/" + (f"{service}/" if service else "")


def instance_prefix(key: str) -> str:
    """The part of a registry key that names its instance (``registry/<env>/<svc>/<id>``), or
    "" for a key that is not a registration."""
    return key.rsplit("/", 1)[0] if parse_registry_key(key) else ""


def parse_registry_key(key: str) -> tuple[str, str, str, str] | None:
    """``(environment, service, id, "entry" or "health")`` of a registry key; None otherwise."""
    match = _REGISTRY_KEY.match(key)
    return (match.group(1), match.group(2), match.group(3), match.group(4)) if match else None


# Blue-green live pointers

BLUEGREEN_PREFIX = "bluegreen/"
_POINTER_KEY = re.compile(r"^bluegreen/([^/]+)/([^/]+)/live$")


def pointer_key(environment: str, service: str) -> str:
    """``bluegreen/<environment>/<service>/live``: the one key a cutover compares and sets."""
    return f"{BLUEGREEN_PREFIX}{environment}/{service}/live"


def pointer_prefix(environment: str) -> str:
    """The prefix under which every live pointer of ``environment`` lives."""
    return f"{BLUEGREEN_PREFIX}{environment}/"


def parse_pointer_key(key: str) -> tuple[str, str] | None:
    """``(environment, service)`` of a live pointer's key; None for any other key."""
    match = _POINTER_KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


# Events: what portctl did to ports by itself (a move by conflict resolution, a freed port)

EVENTS_PREFIX = "events/"
_EVENT_KEY = re.compile(r"^events/([^/]+)/(\d{20})-([0-9a-f]{8})$")


def event_key(host: str, at_ns: int, nonce: str) -> str:
    """``events/<host>/<20-digit nanoseconds>-<8 hex>``: one event; keys sort by time."""
    return f"{EVENTS_PREFIX}{host}/{at_ns:020d}-{nonce}"


def events_prefix(host: str | None = None) -> str:
    """Every host's events, or one host's."""
    return EVENTS_PREFIX if host is None else f"{EVENTS_PREFIX}{host}/"


def parse_event_key(key: str) -> tuple[str, int] | None:
    """``(host, nanoseconds)`` of an event key; None for any other key."""
    match = _EVENT_KEY.match(key)
    return (match.group(1), int(match.group(2))) if match else None
