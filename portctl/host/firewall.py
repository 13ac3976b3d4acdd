"""The host's packet filter, read for rules that drop or reject traffic to a port.

:func:`read_firewall` runs ``iptables-save``, ``ip6tables-save`` and ``nft -j list ruleset``
(each where installed, never through a shell, each with a timeout) and parses their output into
:class:`FirewallRule` objects; :meth:`FirewallView.blocking` picks those whose target is DROP or
REJECT and that name the port.

Which tool is believed for what:

* iptables **legacy** keeps its rules where nft cannot see them, and nft's own tables are
  invisible to it: both are read and every rule counts.
* iptables **nf_tables** (``iptables-nft``, the default on current distributions) writes its
  tables into nftables, so ``nft`` shows them again, some of their matches only as opaque
  ``xt`` expressions (``-m multiport``). Those tables (``filter``, ``nat``, ``mangle``, ``raw``,
  ``security`` of families ``ip`` and ``ip6``) are taken from ``iptables-save``, which prints
  them in full; every other nft table (``inet firewalld``, ``inet filter`` of nftables.service,
  Docker's nftables tables) is taken from ``nft``.
* Only nft installed, or only iptables: that tool alone.

Only rules that name the port count (``--dport``, ``-m multiport --dports``, nft ``dport``
matches, with ranges, sets and negation): a rule without a port match (a chain's DROP policy,
``-j DROP`` for an interface, conntrack INVALID) drops under conditions a port cannot be judged
by, and reporting it for every port would hide the rules that matter. Other conditions of a
rule (source, interface) are not judged: the rule is reported with its text, which shows them.

Reading needs root (CAP_NET_ADMIN); without it, or without any tool, the view is empty and its
``notice`` says why in one line.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Block",
    "FirewallRule",
    "FirewallView",
    "PortMatch",
    "parse_iptables_save",
    "parse_nft_json",
    "read_firewall",
]

BLOCKING = frozenset({"DROP", "REJECT"})
# The tables iptables-nft keeps in nftables, per nft family: read from iptables-save instead.
IPTABLES_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_PROTOCOL_NUMBERS = {"6": "tcp", "17": "udp"}


# --- what a rule matches ----------------------------------------------------------------------


@dataclass(frozen=True)
class PortMatch:
    """The destination ports a rule matches: ``ranges`` (inclusive), or every port but those
    when ``negated``."""

    ranges: tuple[tuple[int, int], ...]
    negated: bool = False

    def matches(self, port: int) -> bool:
        inside = any(low <= port <= high for low, high in self.ranges)
        return inside != self.negated


@dataclass(frozen=True)
class FirewallRule:
    tool: str  # "iptables", "ip6tables" or "nft"
    family: int  # 4 or 6; 0 for an nft inet/bridge/netdev table, which sees both
    table: str  # "filter", "raw"; nft: the table's name ("firewalld")
    chain: str  # "INPUT", "FORWARD", "DOCKER-USER"
    action: str  # "DROP", "REJECT", "ACCEPT", "JUMP DOCKER-USER"... upper case
    text: str  # the rule as the tool prints it ("-A INPUT -p tcp -m tcp --dport 80 -j DROP")
    protocols: tuple[str, ...] = ()  # "tcp", "udp"; () for any
    protocols_negated: bool = False  # "! -p tcp": every protocol but these
    ports: tuple[PortMatch, ...] = ()  # every one must match; () when the rule names no port
    nft_family: str = ""  # nft: "ip", "ip6", "inet", ...
    handle: int | None = None  # nft: the rule's handle, to delete it by
    # Whether the rule has a condition beyond protocol and port (a source, an interface, a
    # state): True unless known otherwise, so an ACCEPT is never taken to let everyone through.
    conditional: bool = True

    @property
    def blocks(self) -> bool:
        return self.action in BLOCKING

    @property
    def jumps_to(self) -> str | None:
        """The user chain this rule jumps or goes to; None for a verdict."""
        return self.action.removeprefix("JUMP ") if self.action.startswith("JUMP ") else None

    @property
    def chain_key(self) -> tuple[str, str, str]:
        """Which rules share this rule's chain: same tool (family) and table."""
        return (self.tool, self.nft_family, self.table)

    def may_match(self, port: int, protocol: str = "tcp") -> bool:
        """Whether traffic to ``port``/``protocol`` may meet this rule: it names the port, or
        names no port and no other protocol (its other conditions are not judged)."""
        if self.ports:
            return self.matches(port, protocol)
        return not self.protocols or (protocol in self.protocols) != self.protocols_negated

    def lets_through(self, port: int, protocol: str = "tcp") -> bool:
        """Whether this rule accepts every packet to ``port``/``protocol`` that reaches it: an
        ACCEPT with no condition but protocol and port (the shape doctor's own fix has)."""
        return self.action == "ACCEPT" and not self.conditional and self.matches(port, protocol)

    def matches(self, port: int, protocol: str = "tcp") -> bool:
        """Whether traffic to ``port``/``protocol`` meets this rule's port matches; a rule that
        names no port never does (see the module's description)."""
        if not self.ports:
            return False
        if self.protocols and (protocol in self.protocols) == self.protocols_negated:
            return False
        return all(m.matches(port) for m in self.ports)

    @property
    def where(self) -> str:
        """``chain INPUT of table filter (iptables)``: where the rule is, for a finding."""
        family = f"{self.nft_family} " if self.nft_family else ""
        return f"chain {self.chain} of table {family}{self.table} ({self.tool})"

    def delete_command(self) -> str:
        """The command that removes this rule."""
        if self.tool == "nft":
            handle = self.handle if self.handle is not None else "N (nft -a list ruleset shows it)"
            return f"nft delete rule {self.nft_family} {self.table} {self.chain} handle {handle}"
        table = "" if self.table == "filter" else f"-t {self.table} "
        return f"{self.tool} {table}-D {self.text.removeprefix('-A ')}"

    def allow_command(self, port: int, protocol: str = "tcp") -> str:
        """The command that lets ``port`` through ahead of this rule, in its own chain."""
        if self.tool == "nft":
            proto = protocol if protocol in ("tcp", "udp") else "th"
            return f"nft insert rule {self.nft_family} {self.table} {self.chain} {proto} dport {port} accept"
        table = "" if self.table == "filter" else f"-t {self.table} "
        return f"{self.tool} {table}-I {self.chain} -p {protocol} --dport {port} -j ACCEPT"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "action": self.action,
            "rule": self.text,
            "handle": self.handle,
            "delete": self.delete_command(),
        }


@dataclass(frozen=True)
class FirewallView:
    rules: tuple[FirewallRule, ...] = ()
    read_by: tuple[str, ...] = ()  # the tools whose rules were read
    notice: str | None = None  # why nothing could be read, in one line
    notes: tuple[str, ...] = ()  # tools that failed while another was read

    @property
    def readable(self) -> bool:
        return bool(self.read_by)

    def blocking(self, port: int, protocol: str = "tcp") -> list[FirewallRule]:
        """The rules that name ``port``/``protocol`` and drop or reject it, themselves or in a
        chain they send it to, and that no earlier ACCEPT in their chain makes unreachable."""
        return [b.rule for b in self.blocks(port, protocol)]

    def blocks(self, port: int, protocol: str = "tcp", *, shadowed: bool = False) -> list[Block]:
        """Each rule naming ``port`` that drops it (see :class:`Block`), in rule order; with
        ``shadowed``, those an earlier ACCEPT lets the port past instead."""
        chains = _chains(self.rules)
        out = []
        for key, rules in chains.items():
            for i, rule in enumerate(rules):
                if not rule.matches(port, protocol):
                    continue
                path, dropper = _dropper(rule, key, chains, port, protocol)
                if dropper is None:
                    continue
                accept = next((r for r in rules[:i] if _accepts(r, key, chains, port, protocol)), None)
                if (accept is not None) == shadowed:
                    out.append(Block(rule, tuple(path), dropper, accept))
        return out


@dataclass(frozen=True)
class Block:
    """A rule naming a port that drops it: ``rule`` itself (``via`` empty, ``dropper`` the
    rule), or by sending it through the chains ``via`` to ``dropper``, a DROP or REJECT that
    matches the port or names none. ``accepted_by``: an earlier ACCEPT in ``rule``'s chain
    that lets the port through first, so ``rule`` is never reached for it."""

    rule: FirewallRule
    via: tuple[str, ...]
    dropper: FirewallRule
    accepted_by: FirewallRule | None = None

    @property
    def verb(self) -> str:
        return "drops" if self.dropper.action == "DROP" else "rejects"


_ChainKey = tuple[tuple[str, str, str], str]


def _chains(rules: Iterable[FirewallRule]) -> dict[_ChainKey, list[FirewallRule]]:
    """The rules of each chain, in the order the tool printed them (the order they run in)."""
    chains: dict[_ChainKey, list[FirewallRule]] = {}
    for rule in rules:
        chains.setdefault((rule.chain_key, rule.chain), []).append(rule)
    return chains


def _dropper(
    rule: FirewallRule,
    key: _ChainKey,
    chains: dict[_ChainKey, list[FirewallRule]],
    port: int,
    protocol: str,
    seen: frozenset[_ChainKey] = frozenset(),
) -> tuple[list[str], FirewallRule | None]:
    """The DROP or REJECT that ``rule`` leads the port to (itself, or in the chain it jumps or
    goes to, followed further; a cycle ends the search), and the chains on the way."""
    if rule.blocks:
        return [], rule
    target = rule.jumps_to
    if target is None:
        return [], None
    into = (key[0], target)
    if into in seen or into == key:
        return [], None
    for inner in chains.get(into, []):
        if not inner.may_match(port, protocol):
            continue
        if inner.action in ("ACCEPT", "RETURN") and not inner.conditional:
            return [], None  # every packet to the port leaves the chain here, not dropped
        path, found = _dropper(inner, into, chains, port, protocol, seen | {key})
        if found is not None:
            return [target, *path], found
    return [], None


def _accepts(
    rule: FirewallRule,
    key: _ChainKey,
    chains: dict[_ChainKey, list[FirewallRule]],
    port: int,
    protocol: str,
    seen: frozenset[_ChainKey] = frozenset(),
) -> bool:
    """Whether every packet to the port that reaches ``rule`` is accepted by it: a plain ACCEPT
    of the port, or an unconditional jump to a chain that reaches one (ufw's ``ufw-user-input``,
    where ``ufw allow PORT`` puts it) before anything else decides. A cycle, a RETURN or the
    chain's end first: not accepted here."""
    if rule.lets_through(port, protocol):
        return True
    target = rule.jumps_to
    if target is None or rule.conditional or not rule.may_match(port, protocol):
        return False
    into = (key[0], target)
    if into in seen or into == key:
        return False
    for inner in chains.get(into, []):
        if not inner.may_match(port, protocol):
            continue
        if _accepts(inner, into, chains, port, protocol, seen | {key}):
            return True
        if not inner.conditional and (inner.blocks or inner.action == "RETURN"):
            return False  # decided before any ACCEPT: dropped, or back to the caller
    return False


# --- iptables-save ----------------------------------------------------------------------------


def parse_iptables_save(text: str, family: int = 4) -> list[FirewallRule]:
    """Every rule in the output of ``iptables-save`` (``family`` 4) or ``ip6tables-save`` (6)."""
    tool = "iptables" if family == 4 else "ip6tables"
    rules: list[FirewallRule] = []
    table = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            rule = _iptables_rule(line, tool, family, table)
            if rule is not None:
                rules.append(rule)
    return rules


def _iptables_rule(line: str, tool: str, family: int, table: str) -> FirewallRule | None:
    try:
        words = shlex.split(line)
    except ValueError:  # an unbalanced quote in a comment: not a rule we can read
        return None
    if len(words) < 2:
        return None
    chain = words[1]
    protocols: tuple[str, ...] = ()
    protocols_negated = False
    ports: list[PortMatch] = []
    action = ""
    negate = False
    conditional = False
    i = 2
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else ""
        if word == "!":
            negate = True
            i += 1
            continue
        if word in ("-p", "--protocol"):
            proto = _PROTOCOL_NUMBERS.get(value, value.lower())
            protocols, protocols_negated = ((), False) if proto == "all" else ((proto,), negate)
        elif word in ("--dport", "--destination-port", "--dports", "--destination-ports", "--ports"):
            match = _port_spec(value, negate)
            if match is None:
                return None  # a port spelled by service name: not judged
            ports.append(match)
        elif word in ("-j", "--jump", "-g", "--goto"):
            action = value.upper() if value.upper() in BLOCKING | {"ACCEPT", "RETURN"} else f"JUMP {value}"
        elif word in ("-m", "--match"):
            conditional = conditional or value not in _PORT_MODULES
        elif word != "--comment" and not action:  # after the target: its options (--reject-with)
            conditional = True  # a source, an interface, a state...: a condition not judged
        negate = False
        i += 2 if word.startswith("-") and value and not value.startswith("-") else 1
    return FirewallRule(
        tool,
        family,
        table,
        chain,
        action,
        line,
        protocols,
        protocols_negated,
        tuple(ports),
        conditional=conditional,
    )


# The match modules that only say protocol and port, and a comment, which matches everything.
_PORT_MODULES = frozenset({"tcp", "udp", "multiport", "comment"})


def _port_spec(spec: str, negated: bool) -> PortMatch | None:
    """``80``, ``1000:2000``, ``53,1000:2000`` (multiport); None for a name (``http``)."""
    ranges = []
    for part in spec.split(","):
        low, colon, high = part.partition(":")
        if not (low or high) or not all(p.isdigit() for p in (low, high) if p):
            return None
        if colon:  # "1000:" runs to 65535, ":1000" from 0, as iptables reads them
            ranges.append((int(low or 0), int(high or 65535)))
        else:
            ranges.append((int(low), int(low)))
    return PortMatch(tuple(ranges), negated)


# --- nft -j list ruleset ----------------------------------------------------------------------


def parse_nft_json(text: str, skip_tables: Iterable[tuple[str, str]] = ()) -> list[FirewallRule]:
    """Every rule in the output of ``nft -j list ruleset``, but those of the ``(family, table)``
    pairs in ``skip_tables`` (iptables-nft's, when iptables-save was read)."""
    skipped = set(skip_tables)
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError):
        return []
    named = _named_sets(items)
    rules = []
    for item in items:
        raw = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(raw, dict) or (raw.get("family"), raw.get("table")) in skipped:
            continue
        rule = _nft_rule(raw, named)
        if rule is not None:
            rules.append(rule)
    return rules


_NFT_FAMILY = {"ip": 4, "ip6": 6}
_NFT_VERDICTS = {"drop": "DROP", "reject": "REJECT", "accept": "ACCEPT", "return": "RETURN"}


def _named_sets(items: Sequence[Any]) -> dict[tuple[str, str, str], Any]:
    found = {}
    for item in items:
        raw = item.get("set") if isinstance(item, dict) else None
        if isinstance(raw, dict) and "elem" in raw:
            found[(raw.get("family", ""), raw.get("table", ""), raw.get("name", ""))] = raw["elem"]
    return found


def _nft_rule(raw: dict[str, Any], named: dict[tuple[str, str, str], Any]) -> FirewallRule | None:
    nft_family, table, chain = (
        str(raw.get("family", "")),
        str(raw.get("table", "")),
        str(raw.get("chain", "")),
    )
    protocols: tuple[str, ...] = ()
    protocols_negated = False
    ports: list[PortMatch] = []
    action = ""
    words = []
    conditional = False
    for expr in raw.get("expr") or []:
        if not isinstance(expr, dict) or not expr:
            return None
        kind, body = next(iter(expr.items()))
        if kind == "match" and isinstance(body, dict):
            words.append(_match_text(body))
            found = _nft_match(body, lambda name: named.get((nft_family, table, name.lstrip("@"))))
            if found is None:
                return None  # a port match we cannot judge (a set we could not read)
            what, value = found
            conditional = conditional or what == "other"
            if what == "protocol":
                protocols, protocols_negated = value
            elif what == "port":
                ports.append(value[0])
                if value[1] is not None:
                    protocols, protocols_negated = (value[1],), False
        elif kind in _NFT_VERDICTS:
            action = _NFT_VERDICTS[kind]
            words.append(kind)
        elif kind in ("jump", "goto") and isinstance(body, dict):
            action = f"JUMP {body.get('target', '')}"
            words.append(f"{kind} {body.get('target', '')}")
        elif kind == "xt" and isinstance(body, dict):
            if body.get("type") == "target" and str(body.get("name", "")).upper() in BLOCKING:
                action = str(body["name"]).upper()
            conditional = conditional or body.get("type") != "target"
            words.append(f"xt {body.get('type', '')} {body.get('name', '')}")
        elif kind != "counter":
            conditional = True  # a limit, a log, a mangle...: not known to let every packet on
            words.append(kind)
    handle = raw.get("handle")
    return FirewallRule(
        "nft",
        _NFT_FAMILY.get(nft_family, 0),
        table,
        chain,
        action,
        " ".join(words),
        protocols,
        protocols_negated,
        tuple(ports),
        nft_family,
        handle if isinstance(handle, int) else None,
        conditional,
    )


def _nft_match(body: dict[str, Any], lookup: Callable[[str], Any]) -> tuple[str, Any] | None:
    """("port", PortMatch), ("protocol", (names, negated)), ("other", None); None when a port
    match cannot be judged."""
    left, right, op = body.get("left"), body.get("right"), body.get("op", "==")
    negated = op == "!="
    if isinstance(left, dict) and "payload" in left:
        payload = left["payload"]
        if isinstance(payload, dict) and payload.get("field") == "dport":
            ranges = _nft_ranges(right, lookup)
            if ranges is None:
                return None
            # "tcp dport 80" says the protocol too; "th dport 80" matches whichever it is
            proto = payload.get("protocol")
            return "port", (PortMatch(ranges, negated), proto if proto in ("tcp", "udp") else None)
        if isinstance(payload, dict) and payload.get("field") in ("protocol", "nexthdr"):
            return "protocol", (_nft_names(right), negated)
    if isinstance(left, dict) and left.get("meta", {}).get("key") == "l4proto":
        return "protocol", (_nft_names(right), negated)
    return "other", None


def _nft_ranges(value: Any, lookup: Callable[[str], Any]) -> tuple[tuple[int, int], ...] | None:
    """The port ranges of an nft match's right side: a number, a range, an anonymous set, or a
    named set (``@blocked``, looked up in the ruleset); None for what cannot be judged."""
    if isinstance(value, str) and value.startswith("@"):
        value = {"set": lookup(value)}
    if isinstance(value, dict) and isinstance(value.get("elem"), dict):
        value = value["elem"].get("val")  # a set element with options (timeout, counter)
    if isinstance(value, int) and not isinstance(value, bool):
        return ((value, value),)
    if isinstance(value, dict) and isinstance(value.get("range"), list) and len(value["range"]) == 2:
        low, high = value["range"]
        return ((low, high),) if all(isinstance(p, int) for p in (low, high)) else None
    if isinstance(value, dict) and "set" in value and value["set"] is not None:
        parts = [_nft_ranges(e, lookup) for e in _listed(value["set"])]
        return None if any(p is None for p in parts) else tuple(r for p in parts if p for r in p)
    return None


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _nft_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict) and "set" in value:
        return tuple(n for v in value["set"] for n in _nft_names(v))
    text = str(value)
    return (_PROTOCOL_NUMBERS.get(text, text),)


def _match_text(body: dict[str, Any]) -> str:
    op = body.get("op", "==")
    shown = "" if op in ("==", "in") else f"{op} "
    return f"{_value_text(body.get('left'))} {shown}{_value_text(body.get('right'))}"


def _value_text(value: Any) -> str:
    """An nft JSON expression as ``nft list ruleset`` prints it, near enough for a finding."""
    if not (isinstance(value, dict) and value):
        return str(value)
    kind, body = next(iter(value.items()))
    if isinstance(body, dict) and kind in ("payload", "meta", "ct"):
        prefix = {"payload": str(body.get("protocol", "")), "meta": "meta", "ct": "ct"}[kind]
        return f"{prefix} {body.get('field') or body.get('key') or ''}"
    if kind == "range" and isinstance(body, list):
        return "-".join(_value_text(v) for v in body)
    if kind == "prefix" and isinstance(body, dict):
        return f"{body.get('addr')}/{body.get('len')}"
    if kind == "set":
        return "{ " + ", ".join(_value_text(v) for v in _listed(body)) + " }"
    return str(kind)


# --- running the tools ------------------------------------------------------------------------


@dataclass
class _Reading:
    rules: list[FirewallRule] = field(default_factory=list)
    read_by: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # tools refused for want of root
    nft_backed: set[str] = field(default_factory=set)  # nft families whose iptables tables were read
    search: str = ""  # where the tools are looked for


def read_firewall(timeout: float = 5.0, *, path: str | None = None) -> FirewallView:
    """The rules of this network namespace's packet filter (see the module's description).

    ``path``: the folders to find the tools in (default: PATH and the sbin folders)."""
    reading = _Reading(search=path if path is not None else _search_path())
    for tool, family, nft_family in (("iptables-save", 4, "ip"), ("ip6tables-save", 6, "ip6")):
        text = _run(tool, [tool], timeout, reading)
        if text is not None:
            reading.rules += parse_iptables_save(text, family)
            reading.read_by.append(tool.removesuffix("-save"))
            if _nf_tables_backend(text, shutil.which(tool, path=reading.search)):
                reading.nft_backed.add(nft_family)
    text = _run("nft", ["nft", "-j", "list", "ruleset"], timeout, reading)
    if text is not None:
        skip = [(f, t) for f in reading.nft_backed for t in IPTABLES_TABLES]
        reading.rules += parse_nft_json(text, skip)
        reading.read_by.append("nft")
    return _view(reading)


def _view(reading: _Reading) -> FirewallView:
    failures = list(reading.failures)
    if reading.denied:
        names = _and(reading.denied)
        failures.insert(
            0,
            f"{names} need{'s' if len(reading.denied) == 1 else ''} root (permission denied): "
            "run portctl doctor as root to check the firewall",
        )
    if reading.read_by:
        return FirewallView(tuple(reading.rules), tuple(reading.read_by), None, tuple(failures))
    if failures:
        return FirewallView(notice="firewall not read: " + "; ".join(failures))
    return FirewallView(
        notice="firewall not read: neither iptables-save nor nft is installed "
        "(install iptables or nftables to check it)"
    )


def _run(name: str, argv: list[str], timeout: float, reading: _Reading) -> str | None:
    path = shutil.which(name, path=reading.search)
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        reading.failures.append(f"{name} did not answer within {timeout:g}s")
        return None
    except OSError as e:
        reading.failures.append(f"{name} could not be run ({e.strerror or e})")
        return None
    if done.returncode != 0:
        text = (
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        )
        if _denied(text):
            reading.denied.append(name)
        else:
            reading.failures.append(f"{name}: {text}")
        return None
    return done.stdout


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _denied(text: str) -> bool:
    lowered = text.lower()
    return any(s in lowered for s in ("permission denied", "operation not permitted", "must be root"))


def _search_path() -> str:
    """PATH and the sbin folders a non-root PATH often lacks, where the tools live."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])


def _nf_tables_backend(text: str, found: str | None) -> bool:
    """Whether iptables is iptables-nft: its header says so, or, with no table to print, the
    binary it resolves to is xtables-nft-multi."""
    for line in text.splitlines()[:3]:
        if line.startswith("# Generated by"):
            return "(nf_tables)" in line
    return found is not None and "nft" in os.path.basename(os.path.realpath(found))
