"""Three ``portctl doctor`` checks: the firewall, the sockets inside published containers, and
the store's own consistency.

* :func:`firewall_verdicts` - a DROP or REJECT rule (iptables, ip6tables, nft) naming a
  checked port fails, and so does a rule naming it that jumps to a chain that drops it, with
  the command that deletes the rule or lets the port through; a rule that an earlier plain
  ACCEPT of the port in its chain keeps from being reached is not blocking (doctor's own
  "allow it" fix is such an ACCEPT); an unreadable firewall is one UNKNOWN saying why.
* :func:`container_port_verdicts` - a running container that publishes a checked port must
  have something listening on the container port inside it, on an address the published port
  reaches (not only 127.0.0.1); read from the container's own network namespace.
* :func:`store_verdicts` - the store answers; every port claim has its allocation record and
  every record its claim; no registration of this host is a zombie (its port silent, its
  process gone: the agent's own rule, :func:`portctl.registry.agent.zombie_signs`) or critical
  for long (over ``check.deregister_after``, or :data:`LONG_CRITICAL` without one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from portctl.errors import DockerUnavailable, StoreCorrupt, StoreDenied, StoreUnavailable
from portctl.host.firewall import Block, FirewallView, read_firewall
from portctl.host.netns import NamespaceSockets, container_pid, local_pids, read_namespace
from portctl.keys import allocation_key, allocations_prefix, claims_prefix
from portctl.operations._doctoring import Verdict, VerdictStatus

# _claim_owner: the allocator's own reading of a claim (StoreCorrupt if not its JSON)
from portctl.ports.allocator import Allocation, _claim_owner, parse_allocation
from portctl.records import Status, iso_utc
from portctl.registry.agent import critical_too_long, listens_in, zombie_signs
from portctl.registry.health import RUNNABLE, run_check

if TYPE_CHECKING:
    from portctl.backends.base import Entry
    from portctl.host.containers import Container, PublishedPort
    from portctl.operations._doctoring import DoctorContext
    from portctl.records import ServiceEntry
    from portctl.registry.entries import Instance

__all__ = [
    "LONG_CRITICAL",
    "CheckedPort",
    "container_port_verdicts",
    "firewall_findings",
    "firewall_verdicts",
    "store_verdicts",
]

LONG_CRITICAL = 300.0  # seconds critical before doctor calls it a failure, without deregister_after
_LOOPBACK = frozenset({"127.0.0.1", "::1"})


@dataclass(frozen=True)
class CheckedPort:
    """A port a check looks at, and the service it is for (None for a PORT argument)."""

    port: int
    protocol: str
    service: str | None

    @property
    def subject(self) -> str:
        where = f"{self.port}/{self.protocol}"
        return f"{self.service} {where}" if self.service else where  # as the other checks name it


def _ports(ctx: DoctorContext) -> list[CheckedPort]:
    """Each target's port, then each asked port (tcp) that no target has, once."""
    found: dict[tuple[int, str], CheckedPort] = {}
    for t in ctx.targets:
        found.setdefault((t.port, t.protocol), CheckedPort(t.port, t.protocol, t.service))
    for port in ctx.asked_ports:
        found.setdefault((port, "tcp"), CheckedPort(port, "tcp", None))
    return list(found.values())


# --- the firewall -----------------------------------------------------------------------------


def firewall_verdicts(ctx: DoctorContext) -> list[Verdict]:
    """A FAIL per rule that drops or rejects a checked port; OK per port nothing blocks; one
    UNKNOWN when the firewall could not be read."""
    ports = _ports(ctx)
    return firewall_findings(read_firewall(), ports) if ports else []


def firewall_findings(view: FirewallView, ports: list[CheckedPort]) -> list[Verdict]:
    """The verdicts on ``ports`` of a firewall already read (pure, for tests)."""
    if not view.readable:
        return [_unreadable_firewall(view)]
    out: list[Verdict] = []
    for p in ports:
        blocks = view.blocks(p.port, p.protocol)
        out += [_blocked(p, b) for b in blocks]
        if not blocks:
            out.append(_let_through(view, p, view.blocks(p.port, p.protocol, shadowed=True)))
    return out


def _let_through(view: FirewallView, p: CheckedPort, shadowed: list[Block]) -> Verdict:
    """OK: no rule drops the port, or only rules an earlier ACCEPT of the port keeps it from."""
    where = f"{p.port}/{p.protocol}"
    # Rules that drop every port, and chain policies, are not judged (they say nothing of
    # this port in particular): the finding says so rather than "nothing drops it".
    finding = (
        f"no {_tools(view)} rule that names {where} drops or rejects it (rules for every port are not judged)"
    )
    if shadowed and shadowed[0].accepted_by is not None:
        accept = shadowed[0].accepted_by
        how = (
            f"sends {where} to chain {accept.jumps_to}, which accepts it,"
            if accept.jumps_to
            else f"lets {where} through"
        )
        finding = (
            f"a rule in {accept.where} {how} ahead of the {shadowed[0].dropper.action} rule that names it: "
            f"{accept.text}"
        )
    return Verdict(
        "firewall",
        p.subject,
        VerdictStatus.OK,
        finding,
        service=p.service,
        port=p.port,
        protocol=p.protocol,
        details={
            "read_by": list(view.read_by),
            "notes": list(view.notes),
            "shadowed": [_block_dict(b) for b in shadowed],
        },
    )


def _block_dict(block: Block) -> dict[str, object]:
    out = block.rule.to_dict()
    if block.via:
        out["via"] = list(block.via)
        out["dropped_by"] = block.dropper.text
    if block.accepted_by is not None:
        out["accepted_by"] = block.accepted_by.text
    return out


def _unreadable_firewall(view: FirewallView) -> Verdict:
    notice = view.notice or "firewall not read"
    fix = "run portctl doctor as root" if "root" in notice else "install iptables or nftables"
    return Verdict("firewall", "firewall", VerdictStatus.UNKNOWN, notice, fix)


def _blocked(p: CheckedPort, block: Block) -> Verdict:
    rule, where = block.rule, f"{p.port}/{p.protocol}"
    if block.via:
        chains = block.via[0] + (f" (then {', '.join(block.via[1:])})" if len(block.via) > 1 else "")
        finding = (
            f"a rule in {rule.where} sends {where} to chain {chains}, whose rule "
            f"{block.dropper.text} {block.verb} it: {rule.text}"
        )
    else:
        finding = f"a {rule.action} rule in {rule.where} {block.verb} {where}: {rule.text}"
    return Verdict(
        "firewall",
        p.subject,
        VerdictStatus.FAIL,
        finding,
        f"{rule.delete_command()} (or allow it: {rule.allow_command(p.port, p.protocol)})",
        service=p.service,
        port=p.port,
        protocol=p.protocol,
        details={"rule": _block_dict(block)},
    )


def _tools(view: FirewallView) -> str:
    names = list(view.read_by)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# --- the sockets inside containers -----------------------------------------------------------


def container_port_verdicts(ctx: DoctorContext) -> list[Verdict]:
    """For each running container publishing a checked port: does anything listen on the
    container port inside it, where the published port reaches?"""
    docker = ctx.host.docker
    out: list[Verdict] = []
    tables: dict[str, NamespaceSockets | str] = {}
    seen: set[tuple[str, int, str]] = set()
    for p in _ports(ctx):
        for container in docker.publishing(p.port, p.protocol):
            if not container.running or (container.id, p.port, p.protocol) in seen:
                continue
            seen.add((container.id, p.port, p.protocol))
            if container.id not in tables:
                tables[container.id] = _container_table(container, docker.endpoint)
            for published in _published(container, p):
                out.append(_judge_container(container, published, p, tables[container.id]))
    return out


def _published(container: Container, p: CheckedPort) -> list[PublishedPort]:
    """The container ports ``p`` is published to (one per target port, whatever addresses)."""
    found = {x.target: x for x in container.published if x.port == p.port and x.protocol == p.protocol}
    return list(found.values())


def _container_table(container: Container, endpoint: str) -> NamespaceSockets | str:
    """The container's socket table, or why it cannot be read."""
    if not local_pids(endpoint):
        return f"Docker at {endpoint} may run on another host, whose processes this host cannot read"
    try:
        pid = container_pid(container.id, endpoint)
    except DockerUnavailable as e:
        return e.message
    if pid is None:
        return "it has no running process"
    return read_namespace(pid, ("tcp", "udp"))


def _judge_container(
    container: Container, published: PublishedPort, p: CheckedPort, table: NamespaceSockets | str
) -> Verdict:
    inside = published.target
    subject = f"container {container.name} {p.port}/{p.protocol}"
    mapping = f"container {container.name} publishes {p.port} -> container port {inside}"
    details = {"container": container.name, "id": container.id, "container_port": inside}

    def verdict(status: VerdictStatus, finding: str, fix: str = "") -> Verdict:
        return Verdict(
            "container port", subject, status, finding, fix, p.service, p.port, p.protocol, details
        )

    reason = table if isinstance(table, str) else table.reason
    if isinstance(table, str) or table.listeners is None:
        return verdict(VerdictStatus.UNKNOWN, f"{mapping}; its sockets could not be read: {reason}")
    here = table.on_port(inside, p.protocol)
    # Docker's embedded DNS server listens inside every container of a user-defined network
    # (compose's), on 127.0.0.11 and a random port: Docker's, not the service's.
    own = [x for x in table.listeners if x.protocol == p.protocol and x.address != DOCKER_DNS]
    details["listening"] = sorted({f"{x.address}:{x.port}" for x in own})
    if not here:
        others = sorted({x.port for x in own})
        found = f"it listens on {_join(others)}" if others else "nothing listens inside it at all"
        change = f"{p.port}:{others[0]}" if len(others) == 1 else f"{p.port}:PORT"
        return verdict(
            VerdictStatus.FAIL,
            f"{mapping}, but nothing listens on {inside} inside it ({found})",
            f"make the service listen on port {inside} inside the container, "
            f"or change the mapping (HOST:CONTAINER) to {change}",
        )
    if all(x.address in _LOOPBACK for x in here):
        where = _join(sorted({x.address for x in here}))
        return verdict(
            VerdictStatus.FAIL,
            f"{mapping}, but it listens on {inside} only on {where}, which the published port cannot reach",
            f"make the service bind 0.0.0.0:{inside} (every address) inside the container",
        )
    return verdict(VerdictStatus.OK, f"{mapping}, and something listens on {inside} inside it")


DOCKER_DNS = "127.0.0.11"


def _join(items: list[int] | list[str]) -> str:
    return ", ".join(str(i) for i in items)


# --- the store --------------------------------------------------------------------------------


def store_verdicts(ctx: DoctorContext) -> list[Verdict]:
    """The store answers, its claims and allocation records agree, and no registration of
    this host is a zombie or critical for long. A store that does not answer is one FAIL."""
    store = ctx.allocator.store
    try:
        if ctx.store_error is not None:
            raise ctx.store_error
        out = _allocation_verdicts(ctx)
        out += _registration_verdicts(ctx)
    except StoreUnavailable as e:
        return [
            Verdict(
                "store",
                "store",
                VerdictStatus.FAIL,
                f"the store {store.url} does not answer: {e.message}",
                f"start the store server at {store.url}, or choose a store that runs with --store URL "
                "or PORTCTL_STORE",
                details={"store": store.url},
            )
        ]
    except (StoreDenied, StoreCorrupt) as e:
        return [
            Verdict(
                "store", "store", VerdictStatus.FAIL, e.message, _store_fix(e), details={"store": store.url}
            )
        ]
    if not out:
        out.append(
            Verdict(
                "store",
                "store",
                VerdictStatus.OK,
                f"the store {store.url} answers; its claims, allocations and registrations on "
                f"{ctx.allocator.host} agree",
                details={"store": store.url},
            )
        )
    return out


def _store_fix(e: StoreDenied | StoreCorrupt) -> str:
    if isinstance(e, StoreDenied):
        return f"give the store's credentials ({e.credential})"
    return "restore the store from its backup, or delete the unusable key"


# Claims and allocation records


@dataclass(frozen=True)
class _Claim:
    key: str
    port: int
    protocol: str
    service: str
    environment: str


def _allocation_verdicts(ctx: DoctorContext) -> list[Verdict]:
    host = ctx.allocator.host
    entries = ctx.allocator.store.list_many(
        [allocations_prefix(host), claims_prefix(host, "tcp"), claims_prefix(host, "udp")]
    )
    records = {e.key: parse_allocation(e) for e in entries if e.key.startswith(allocations_prefix(host))}
    claims = {(c.protocol, c.port): c for c in _claims(entries, host)}
    out = [v for c in claims.values() for v in _claim_verdict(c, records, host)]
    out += [v for key, r in records.items() for v in _record_verdict(key, r, claims)]
    return out


def _claims(entries: list[Entry], host: str) -> Iterator[_Claim]:
    for protocol in ("tcp", "udp"):
        prefix = claims_prefix(host, protocol)
        for e in entries:
            if not e.key.startswith(prefix):
                continue
            port = e.key.removeprefix(prefix)
            service, environment = _claim_owner(e)
            if port.isdigit():
                yield _Claim(e.key, int(port), protocol, service, environment)


def _claim_verdict(claim: _Claim, records: dict[str, Allocation], host: str) -> list[Verdict]:
    record = records.get(allocation_key(host, claim.environment, claim.service))
    if record is not None and (record.port, record.protocol) == (claim.port, claim.protocol):
        return []
    owner = f"{claim.service} ({claim.environment})"
    where = f"--service {claim.service} --env {claim.environment}"
    details = {"key": claim.key, "owner": {"service": claim.service, "environment": claim.environment}}
    if record is None:
        return [
            Verdict(
                "store",
                f"claim {claim.port}/{claim.protocol}",
                VerdictStatus.FAIL,
                f"the claim {claim.key} keeps port {claim.port} for {owner}, which has no allocation record",
                f"portctl allocate {where} --port {claim.port} writes the record again; if {claim.service} "
                "needs no port, the next allocation of the port takes the claim over",
                claim.service,
                claim.port,
                claim.protocol,
                details,
            )
        ]
    return [
        Verdict(
            "store",
            f"claim {claim.port}/{claim.protocol}",
            VerdictStatus.WARN,
            f"the claim {claim.key} names {owner}, whose allocation is {record.port}/{record.protocol}: "
            "a stale claim",
            f"nothing to run: the next allocation of port {claim.port} takes the stale claim over",
            claim.service,
            claim.port,
            claim.protocol,
            details,
        )
    ]


def _record_verdict(key: str, record: Allocation, claims: dict[tuple[str, int], _Claim]) -> list[Verdict]:
    claim = claims.get((record.protocol, record.port))
    if claim is not None and (claim.service, claim.environment) == (record.service, record.environment):
        return []
    where = f"--service {record.service} --env {record.environment}"
    if claim is None:
        finding = (
            f"the allocation {key} has port {record.port}/{record.protocol} but no claim on it: "
            "another allocation may take it"
        )
        fix = f"portctl release {where} && portctl allocate {where} --port {record.port}"
    else:
        finding = (
            f"the allocation {key} has port {record.port}/{record.protocol}, but its claim {claim.key} "
            f"keeps it for {claim.service} ({claim.environment})"
        )
        fix = f"portctl release {where} && portctl allocate {where} (moves it to a free port)"
    return [
        Verdict(
            "store",
            f"{record.service} {record.port}/{record.protocol}",
            VerdictStatus.FAIL,
            finding,
            fix,
            record.service,
            record.port,
            record.protocol,
            {"key": key, "allocation": record.to_dict()},
        )
    ]


# Registrations


def _registration_verdicts(ctx: DoctorContext) -> list[Verdict]:
    registry = ctx.registry
    now = ctx.now or time.time()
    mine = [i for i in registry.instances(all_environments=True) if i.entry.host == registry.host]
    out: list[Verdict] = []
    for instance in mine:
        verdict = _zombie(ctx, instance) or _long_critical(instance, now)
        if verdict is not None:
            out.append(verdict)
    return out


def _zombie(ctx: DoctorContext, instance: Instance) -> Verdict | None:
    entry = instance.entry
    scan = ctx.host.listeners
    silent, orphan = zombie_signs(entry, lambda port, address: listens_in(scan, port, address))
    if not (silent or orphan):
        return None
    signs = []
    if silent:
        signs.append(f"nothing listens on {entry.address}:{entry.port}")
    if orphan:
        signs.append(f"its process {entry.pid} is gone")
    # A port that is silent while its process lives may be a restart under way: a warning.
    status = VerdictStatus.FAIL if orphan else VerdictStatus.WARN
    finding = f"{entry.service} ({entry.environment}) instance {entry.id} is a zombie: {' and '.join(signs)}"
    fix = (
        f"portctl deregister {entry.id} --env {entry.environment} (or run portctl agent: it removes zombies)"
    )
    fresh = _check_now(entry)
    if fresh is not None and fresh[0] != Status.CRITICAL:
        # Something answers its check right now: the service may have been restarted under
        # another process, or started since the listeners were read. Not a failure to fix.
        status = VerdictStatus.WARN
        finding = (
            f"{entry.service} ({entry.environment}) instance {entry.id} looks like a zombie "
            f"({' and '.join(signs)}), but its check {_passes(fresh[0])} now: {fresh[1]}"
        )
        fix = (
            f"register it again from the process that serves it now, or portctl deregister {entry.id} "
            f"--env {entry.environment} if it is not {entry.service}"
        )
    elif fresh is not None:
        finding += f"; checked now: {fresh[1]}"
    return Verdict(
        "store",
        f"registration {entry.id}",
        status,
        finding,
        fix,
        entry.service,
        entry.port,
        "tcp",
        {"instance": entry.to_dict(), "silent": silent, "orphan": orphan, **_fresh_details(fresh)},
    )


def _long_critical(instance: Instance, now: float) -> Verdict | None:
    """FAIL for an instance critical for long - judged on its check run now, not only on the
    stored record, which nobody may have renewed (no agent running): a check that passes now
    makes it a WARN saying nothing records its health."""
    entry, limit = instance.entry, instance.entry.check.deregister_after
    reason = critical_too_long(entry, instance.health, now, LONG_CRITICAL if limit is None else limit)
    if reason is None:
        return None
    subject = f"{entry.service} ({entry.environment}) instance {entry.id}"
    recorded = f"last recorded at {iso_utc(instance.health.updated_at)}"
    fresh = _check_now(entry)
    details = {"instance": entry.to_dict(), "health": instance.health.to_dict(), **_fresh_details(fresh)}
    if fresh is not None and fresh[0] != Status.CRITICAL:
        head, _, tail = reason.partition(" (")
        return Verdict(
            "store",
            f"registration {entry.id}",
            VerdictStatus.WARN,
            f"{subject} is recorded {head} ({recorded}{'; ' + tail if tail else ')'}, but its check "
            f"{_passes(fresh[0])} now: nothing is recording its health — run portctl agent",
            "portctl agent (or portctl verify, once)",
            entry.service,
            entry.port,
            "tcp",
            details,
        )
    fix = (
        f"make {entry.service} pass its check ({entry.check.describe()}), "
        f"or portctl deregister {entry.id} --env {entry.environment}"
    )
    if limit is not None:
        fix += "; run portctl agent, which removes it after deregister_after"
    if fresh is None:  # a TTL check: only its owner can report; the record is all there is
        finding = f"{subject} is {reason}: {instance.output} ({recorded})"
    else:
        finding = f"{subject} is {reason} ({recorded}); checked now: {fresh[1]}"
    return Verdict(
        "store",
        f"registration {entry.id}",
        VerdictStatus.FAIL,
        finding,
        fix,
        entry.service,
        entry.port,
        "tcp",
        details,
    )


def _check_now(entry: ServiceEntry) -> tuple[Status, str] | None:
    """The instance's check run now (``(status, output)``); None for a check doctor cannot
    run (ttl, none)."""
    if entry.check.kind not in RUNNABLE:
        return None
    return run_check(entry)


def _passes(status: Status) -> str:
    return "passes" if status == Status.PASSING else f"gives {status.value}"


def _fresh_details(fresh: tuple[Status, str] | None) -> dict[str, object]:
    return {} if fresh is None else {"checked_now": {"status": fresh[0].value, "output": fresh[1]}}
