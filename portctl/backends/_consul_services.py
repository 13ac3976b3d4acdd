"""How registry keys map onto Consul agent services, checks and health.

``registry/<env>/<service>/<id>/entry`` is kept verbatim in KV (so it reads back byte for byte
and takes part in transactions) *and* registered as the agent service ``<id>`` named
``<service>``, with its tags, its address and port, its meta plus ``portctl-*`` meta, and its
check as a Consul check that Consul runs. ``.../health`` is never stored: it is built from
Consul's own health (``/v1/health/service/<service>``) with the status policy every store shares.

An entry written with a TTL (a lease) also gets a Consul TTL check, ``portctl-lease:<id>``, with
the lease as its TTL: renewing the lease passes it, so when its keeper stops the instance turns
critical in Consul after one lease (DNS, ``consul_sd`` and resolvers skip it), and Consul
deregisters it once it has been critical for ``DeregisterCriticalServiceAfter`` (the lease, at
least Consul's minimum of a minute).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from portctl import _validate
from portctl.backends._consul_http import go_duration
from portctl.errors import InvalidInput
from portctl.keys import parse_registry_key
from portctl.records import CheckSpec, HealthRecord, ServiceEntry, Status

_CONSUL_META_KEY = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
META_VALUE_MAX = 512
META_PAIRS_MAX = 64
_SEVERITY = {"passing": 0, "warning": 1, "critical": 2}
REAP_MIN = 60.0  # Consul's shortest DeregisterCriticalServiceAfter
LEASE_CHECK = "portctl-lease:"
NOT_REGISTERED = (
    "not registered in Consul: the agent service is gone (deregistered outside portctl, or by "
    "Consul after DeregisterCriticalServiceAfter); register it again"
)


def is_health(key: str) -> bool:
    found = parse_registry_key(key)
    return found is not None and found[3] == "health"


def entry_of(health: str) -> str:
    return health.removesuffix("health") + "entry"


def health_of(entry: str) -> str:
    return entry.removesuffix("entry") + "health"


def check_id(instance: str) -> str:
    return f"service:{instance}"


def lease_check_id(instance: str) -> str:
    return LEASE_CHECK + instance


def parse_entry(key: str, value: str) -> ServiceEntry:
    """The entry a registry key's value holds, checked against its key and Consul's rules, so
    nothing is written that Consul would refuse or that would register under another name."""
    env, service, instance, _ = parse_registry_key(key) or ("", "", "", "")
    try:
        entry = ServiceEntry.from_dict(json.loads(value))
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidInput(key, "a value that is no service entry", f"a service entry as JSON ({e})") from e
    _validate.service_name(service, f"{key}: service (a Consul service name)")
    if (entry.environment, entry.service, entry.id) != (env, service, instance):
        raise InvalidInput(
            key,
            f"an entry for {entry.environment}/{entry.service}/{entry.id}",
            "an entry whose environment, service and id match its key",
        )
    for tag in entry.tags:
        if not tag or len(tag) > 255:
            raise InvalidInput(f"{key}: tag", tag, "1-255 characters")
    _check_meta(key, entry.meta)
    return entry


def _check_meta(key: str, meta: Mapping[str, str]) -> None:
    if len(meta) + 4 > META_PAIRS_MAX:
        raise InvalidInput(
            f"{key}: meta", f"{len(meta)} pairs", f"at most {META_PAIRS_MAX - 4} (Consul's limit)"
        )
    for name, value in meta.items():
        if not _CONSUL_META_KEY.fullmatch(name) or name.startswith(("consul-", "portctl-")):
            raise InvalidInput(
                "meta",
                name,
                "a key of 1-128 letters, digits, '_' or '-' not starting with 'consul-' "
                "(Consul's) or 'portctl-' (ours)",
            )
        if len(str(value)) > META_VALUE_MAX:
            raise InvalidInput(
                f"meta {name}", "a longer value", f"at most {META_VALUE_MAX} characters (Consul's limit)"
            )


def registration(
    entry: ServiceEntry, key: str, prefix: str, status: Status | None, lease: float | None = None
) -> dict[str, Any]:
    """The ``/v1/agent/service/register`` body for an entry; ``status`` is the check's first one,
    ``lease`` the TTL the entry is written with (its lease check's TTL)."""
    meta = {str(k): str(v) for k, v in entry.meta.items()}
    meta.update(
        {
            "portctl-prefix": prefix,
            "portctl-env": entry.environment,
            "portctl-host": entry.host,
            "portctl-key": key[:META_VALUE_MAX],
        }
    )
    body: dict[str, Any] = {
        "ID": entry.id,
        "Name": entry.service,
        "Tags": list(entry.tags),
        "Address": entry.address,
        "Port": entry.port,
        "Meta": meta,
        "Checks": [],
    }
    check = _check(entry, status)
    if check is not None:
        body["Checks"].append(check)
    if lease:
        body["Checks"].append(lease_check(entry.id, lease))
    return body


def lease_check(instance: str, lease: float) -> dict[str, Any]:
    """A TTL check that renewing the lease passes: it starts passing, as the lease starts now."""
    return {
        "CheckID": lease_check_id(instance),
        "Name": "portctl lease",
        "Notes": "passed on every renewal of the registration's lease; critical when it ran out",
        "TTL": go_duration(lease),
        "DeregisterCriticalServiceAfter": go_duration(max(REAP_MIN, lease)),
        "Status": Status.PASSING.value,
    }


def _check(entry: ServiceEntry, status: Status | None) -> dict[str, Any] | None:
    spec: CheckSpec = entry.check
    out: dict[str, Any] = {"CheckID": check_id(entry.id), "Name": f"portctl {spec.kind} check"}
    if spec.kind == "tcp":
        out.update(TCP=_tcp_target(entry.address, entry.port))
    elif spec.kind == "http" and spec.url:
        out.update(HTTP=spec.url)
    elif spec.kind == "ttl" and spec.ttl:
        out.update(TTL=go_duration(spec.ttl))
    else:
        return None
    if spec.kind in ("tcp", "http"):
        out.update(Interval=go_duration(spec.interval), Timeout=go_duration(spec.timeout))
        out.update(
            SuccessBeforePassing=spec.successes_before_passing,
            FailuresBeforeCritical=spec.failures_before_critical,
        )
    if spec.deregister_after:
        out["DeregisterCriticalServiceAfter"] = go_duration(spec.deregister_after)
    out["Status"] = (status or Status.CRITICAL).value
    return out


def _tcp_target(address: str, port: int) -> str:
    bare = address.removeprefix("[").removesuffix("]")
    if bare in ("0.0.0.0", ""):
        bare = "127.0.0.1"
    elif bare == "::":
        bare = "::1"
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def health_record(instance: str, results: list[dict[str, Any]] | None) -> HealthRecord:
    """The shared health of one instance from ``/v1/health/service/<name>``: the worst status of
    its own checks and its node's (passing, warning, critical; anything else counts as
    critical). Consul keeps the times and the TTLs itself, so those fields stay empty and the
    record changes only when Consul's answer does."""
    found = [r for r in results or () if (r.get("Service") or {}).get("ID") == instance]
    if not found:
        return HealthRecord(Status.CRITICAL, NOT_REGISTERED)
    checks = found[0].get("Checks") or []
    worst, outputs = "passing", []
    for check in checks:
        status = str(check.get("Status", "critical"))
        status = status if status in _SEVERITY else "critical"
        if _SEVERITY[status] > _SEVERITY[worst]:
            worst = status
        output = str(check.get("Output") or "").strip()
        if str(check.get("CheckID") or "").startswith(LEASE_CHECK):
            if status != "passing":  # a lease kept alive says nothing about the instance
                outputs.append(f"lease ran out: {output or status}")
        elif check.get("ServiceID"):
            outputs.append(output or status)
        elif status != "passing":
            outputs.append(f"node check {check.get('Name') or check.get('CheckID')}: {output or status}")
    return HealthRecord(Status(worst), "; ".join(outputs) or "no check")


def health_value(record: HealthRecord) -> tuple[str, str]:
    """The JSON of a synthesized health record and its version: a digest of the value, so the
    version changes exactly when the health does."""
    value = json.dumps(record.to_dict(), sort_keys=True)
    return value, "h" + hashlib.sha256(value.encode()).hexdigest()[:16]
