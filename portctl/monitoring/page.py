"""The status page of ``portctl serve`` and its JSON (``/api/status``), from one view.

The page is one HTML document with its style inline and no script or asset from anywhere
else (it works on a host without internet, and shows nothing to a third party); it reloads
itself every ``refresh`` seconds. Every value is escaped. Each instance's row carries
``data-status`` (passing, warning, critical) and each service ``data-service``, so scripts and
tests can read the page as a person sees it.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from typing import Any

from portctl.monitoring.snapshot import SOURCES, Snapshot, Source, stale
from portctl.records import Event, Status, iso_utc
from portctl.registry.entries import Instance
from portctl.routing.live import color_of

__all__ = ["status_html", "status_json"]


def status_json(snapshot: Snapshot) -> dict[str, Any]:
    """Everything the page shows, as data (times as Unix seconds, and ISO 8601 in UTC)."""
    s = snapshot
    store_view = s.store
    instances = store_view.instances if store_view else ()
    pointers = store_view.pointers if store_view else {}
    policy = s.settings.policy
    environments: list[dict[str, Any]] = []
    for env in policy.environments:
        services: dict[str, dict[str, Any]] = {}
        for i in instances:
            e = i.entry
            if e.environment != env:
                continue
            pointer = pointers.get((env, e.service))
            service = services.setdefault(
                e.service,
                {
                    "name": e.service,
                    "type": store_view.service_type(e, policy) if store_view else policy.spec(e.service).type,
                    "live_color": pointer.live if pointer else None,
                    "instances": [],
                },
            )
            old = stale(i, s.taken_at) and i.status != Status.CRITICAL  # critical stays critical
            service["instances"].append(
                {
                    "stale": old,
                    "id": e.id,
                    "host": e.host,
                    "address": e.address,
                    "port": e.port,
                    "check": e.check.describe(),
                    "color": color_of(e),
                    "status": i.status.value,
                    "shown": "stale" if old else i.status.value,
                    "output": _stale_output(i, s.taken_at) if old else i.output,
                    "updated_at": i.health.updated_at or None,
                }
            )
        for service in services.values():
            statuses = [x["shown"] for x in service["instances"]]
            service["status"] = _worst(statuses)
        environments.append({"name": env, "services": list(services.values())})
    counts = Counter(i["shown"] for env in environments for svc in env["services"] for i in svc["instances"])
    conflicts = []
    if s.scan is not None:
        for finding in s.conflicts:
            t = finding.target
            conflicts.append(
                {
                    "service": t.service,
                    "environment": t.environment,
                    "port": t.port,
                    "protocol": t.protocol,
                    "holders": [h.describe() for h in finding.conflicts],
                }
            )
    return {
        "generated_at": s.taken_at,
        "host": s.settings.host,
        "ready": s.ready,
        "store": {
            "type": s.store_type,
            "url": s.store_url,
            "read_at": store_view.read_at if store_view else None,
            "corrupt_keys": list(store_view.corrupt) if store_view else [],
            **_source_dict(s.sources["store"]),
        },
        "sources": {name: _source_dict(s.sources[name]) for name in SOURCES},
        "scanned_at": s.scan.scanned_at if s.scan else None,
        "summary": {
            "instances": len(instances),
            **{shown: counts.get(shown, 0) for shown in (*(st.value for st in Status), "stale")},
            "conflicts": len(conflicts),
        },
        "environments": environments,
        "ranges": _ranges(snapshot),
        "conflicts": conflicts,
        "events": [{**e.to_dict(), "at": e.at} for e in _recent(store_view.events if store_view else ())],
        "notices": list(s.scan.notices) if s.scan else [],
    }


RECENT = 10  # events on the page, newest first


def _recent(events: Sequence[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.at, e.key), reverse=True)[:RECENT]


def _source_dict(source: Source) -> dict[str, Any]:
    return {
        "up": source.up,
        "error": source.error,
        "down_since": source.down_since,
        "last_success": source.last_success,
        "duration_seconds": round(source.duration, 6),
    }


def _worst(statuses: list[str]) -> str:
    for status in (Status.CRITICAL.value, "stale", Status.WARNING.value):
        if status in statuses:
            return status
    return Status.PASSING.value


def _stale_output(instance: Instance, now: float) -> str:
    e = instance.entry
    return (
        f"{instance.status.value} when last checked, {_ago(instance.health.updated_at, now)}; nothing has "
        f"checked it since: is portctl agent running on {e.host}? (last output: {instance.output})"
    )


def _ranges(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Each host's ports per range: this host's every range, other hosts' where they allocate."""
    policy = snapshot.settings.policy
    used: dict[tuple[str, str], Counter[str]] = {}
    for a in snapshot.store.in_ranges(policy) if snapshot.store else ():
        used.setdefault((a.host, a.type), Counter())[a.environment] += 1
    here = snapshot.settings.host
    hosts = sorted({here, *(h for h, _ in used)}, key=lambda h: (h != here, h))
    out = []
    for host in hosts:
        for t in policy.types.values():
            by_env = used.get((host, t.name))
            if host != here and not by_env:
                continue
            size = t.high - t.low + 1
            total = sum(by_env.values()) if by_env else 0
            out.append(
                {
                    "host": host,
                    "type": t.name,
                    "range": t.range_text,
                    "size": size,
                    "allocated": total,
                    "by_environment": dict(sorted(by_env.items())) if by_env else {},
                    "utilisation": total / size,
                }
            )
    return out


# The page ------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
  background:#f6f8fa;color:#1f2328}
header{background:#24292f;color:#fff;padding:14px 24px;display:flex;gap:24px;
  align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header .meta{color:#c9d1d9;font-size:13px}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:0 0 16px;
  padding:12px 16px}
h2{font-size:15px;margin:4px 0 10px}h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-top:1px solid #eaeef2;vertical-align:top}
td.wrap{overflow-wrap:anywhere}
table.services{table-layout:fixed}table.services th:nth-child(1){width:17%}
table.services th:nth-child(2){width:19%}table.services th:nth-child(3){width:17%}
table.services th:nth-child(4){width:17%}table.services th:nth-child(5){width:9%}
th{font-weight:600;color:#57606a;border-top:0}
.pill{display:inline-block;min-width:64px;text-align:center;border-radius:10px;padding:1px 8px;
  color:#fff;font-weight:600;font-size:12px}
.passing{background:#1a7f37}.warning{background:#bf8700}.critical{background:#cf222e}
.stale{background:#6e7781}
.banner{border-radius:6px;padding:10px 14px;margin:0 0 16px;font-weight:600}
.banner.down{background:#ffebe9;border:1px solid #cf222e;color:#82071e}
.banner.ok{background:#dafbe1;border:1px solid #1a7f37;color:#116329}
.bar{background:#eaeef2;border-radius:4px;height:10px;width:160px;display:inline-block;
  vertical-align:middle}
.bar span{display:block;height:10px;border-radius:4px;background:#0969da}
.bar span.full{background:#cf222e}
.muted{color:#57606a}.blue{color:#0969da;font-weight:600}.green{color:#1a7f37;font-weight:600}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
"""


def status_html(snapshot: Snapshot, refresh: float = 10.0) -> str:
    """The status page of ``snapshot``; it reloads itself every ``refresh`` seconds."""
    data = status_json(snapshot)
    now = snapshot.taken_at
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{max(1, round(refresh))}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>portctl: {_e(data['host'])}</title><style>{_STYLE}</style></head><body>",
        _header(data, now),
        "<main>",
        _banner(data, now),
        _services(data),
        _conflicts(data, now),
        _events_html(data, now),
        _ranges_html(data),
        _sources(data, now),
        "</main></body></html>",
    ]
    return "".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _when(then: float | None, now: float) -> str:
    return "never" if then is None else f"{iso_utc(then)} ({_ago(then, now)})"


def _header(data: dict[str, Any], now: float) -> str:
    summary = data["summary"]
    store = data["store"]
    return (
        f"<header><h1>portctl on {_e(data['host'])}</h1>"
        f'<span class="meta">{summary["instances"]} instance(s): {summary["passing"]} passing, '
        f"{summary['warning']} warning, {summary['critical']} critical"
        + (f", {summary['stale']} not checked lately" if summary["stale"] else "")
        + "; "
        f"{summary['conflicts']} conflict(s)</span>"
        f'<span class="meta">store {_e(store["url"])}, read {_ago(store["read_at"], now)}</span></header>'
    )


def _banner(data: dict[str, Any], now: float) -> str:
    store = data["store"]
    if not data["ready"]:
        why = store["error"] or "the first read is under way"
        return f'<div class="banner down" id="store-state" data-up="false">No data yet: {_e(why)}</div>'
    if not store["up"]:
        return (
            f'<div class="banner down" id="store-state" data-up="false">Store unreachable since '
            f"{_e(_when(store['down_since'], now))}: {_e(store['error'])}. Showing what it held at "
            f"{_e(_when(store['read_at'], now))}.</div>"
        )
    summary = data["summary"]
    unhealthy = [
        f"{service['name']} ({env['name']}, {service['status']})"
        for env in data["environments"]
        for service in env["services"]
        if service["status"] != Status.PASSING.value
    ]
    corrupt = store["corrupt_keys"]
    if unhealthy or summary["conflicts"] or corrupt:
        said = [f"Not healthy: {', '.join(unhealthy)}."] if unhealthy else []
        if summary["conflicts"]:
            said.append(f"{summary['conflicts']} port conflict(s), below.")
        if corrupt:
            said.append(
                f"{len(corrupt)} store key(s) could not be read, so what they hold is not shown: "
                + "; ".join(corrupt[:3])
                + (" ..." if len(corrupt) > 3 else "")
            )
        return f'<div class="banner down" id="store-state" data-up="true">{_e(" ".join(said))}</div>'
    if summary["instances"]:
        scan = data["sources"]["host"]
        if data["scanned_at"] is None:
            scanned = "the port scan has not finished yet"
        elif not scan["up"]:
            last = _ago(data["scanned_at"], now)
            scanned = f"the port scan is failing ({scan['error']}); the last one, {last}, found no conflicts"
        else:
            scanned = "no conflicts"
        return (
            f'<div class="banner ok" id="store-state" data-up="true">All services healthy; {scanned}.</div>'
        )
    return '<div id="store-state" data-up="true" hidden></div>'


def _services(data: dict[str, Any]) -> str:
    out = ['<section id="services"><h2>Services</h2>']
    for env in data["environments"]:
        out.append(f'<h3 data-environment="{_e(env["name"])}">{_e(env["name"])}</h3>')
        if not env["services"]:
            out.append('<p class="muted">No service registered.</p>')
            continue
        out.append(
            '<table class="services"><tr><th>Service</th><th>Instance</th><th>Where</th><th>Check</th>'
            "<th>Health</th><th>Output</th></tr>"
        )
        for service in env["services"]:
            live = service["live_color"]
            live_text = f' <span class="{_e(live)}">live: {_e(live)}</span>' if live else ""
            first = True
            for i in service["instances"]:
                name_cell = (
                    f'<td rowspan="{len(service["instances"])}" data-service="{_e(service["name"])}" '
                    f'data-status="{_e(service["status"])}"><b>{_e(service["name"])}</b> '
                    f'<span class="muted">{_e(service["type"])}</span>{live_text}</td>'
                    if first
                    else ""
                )
                first = False
                color = f' <span class="{_e(i["color"])}">{_e(i["color"])}</span>' if i["color"] else ""
                out.append(
                    f'<tr class="instance" data-instance="{_e(i["id"])}" data-status="{_e(i["shown"])}">'
                    f"{name_cell}<td><code>{_e(i['id'])}</code>{color}</td>"
                    f"<td>{_e(i['host'])} <code>{_e(i['address'])}:{i['port']}</code></td>"
                    f"<td>{_e(i['check'])}</td>"
                    f'<td><span class="pill {_e(i["shown"])}">{_e(i["shown"])}</span></td>'
                    f'<td class="muted wrap">{_e(i["output"])}</td></tr>'
                )
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


def _conflicts(data: dict[str, Any], now: float) -> str:
    out = ['<section id="conflicts"><h2>Conflicts</h2>']
    if data["scanned_at"] is not None:
        out.append(
            f'<p class="muted">This host\'s allocated ports, scanned {_ago(data["scanned_at"], now)}.</p>'
        )
    if data["scanned_at"] is None:
        out.append('<p class="muted">The port scan has not finished yet.</p>')
    elif not data["conflicts"]:
        out.append('<p class="muted">No allocated port is held by anything else.</p>')
    else:
        out.append("<table><tr><th>Service</th><th>Environment</th><th>Port</th><th>Held by</th></tr>")
        for c in data["conflicts"]:
            holders = "<br>".join(_e(h) for h in c["holders"])
            out.append(
                f'<tr class="conflict" data-service="{_e(c["service"])}"><td>{_e(c["service"])}</td>'
                f"<td>{_e(c['environment'])}</td><td>{c['port']}/{_e(c['protocol'])}</td>"
                f'<td class="wrap">{holders}</td></tr>'
            )
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


def _events_html(data: dict[str, Any], now: float) -> str:
    """What portctl changed by itself lately: ports moved by conflict resolution, ports freed."""
    out = ['<section id="events"><h2>Recent changes</h2>']
    if not data["events"]:
        out.append('<p class="muted">portctl has moved or freed no port (portctl events).</p></section>')
        return "".join(out)
    out.append(
        "<table><tr><th>When</th><th>Host</th><th>Change</th><th>Service</th><th>Port</th><th>Holder</th></tr>"
    )
    for e in data["events"]:
        ports = (
            f"{e['old_port'] or '-'} &rarr; {e['new_port']}" if e["new_port"] else f"{e['old_port'] or '-'}"
        )
        service = f"{_e(e['service'])} ({_e(e['environment'])})" if e["service"] else "-"
        out.append(
            f'<tr class="event" data-kind="{_e(e["kind"])}"><td>{_e(_ago(e["at"], now))}</td>'
            f"<td>{_e(e['host'])}</td><td>{_e(e['kind'])}</td><td>{service}</td><td>{ports}</td>"
            f'<td class="wrap">{_e(e["holder"])}</td></tr>'
        )
    out.append('</table><p class="muted">All of them: portctl events.</p></section>')
    return "".join(out)


def _ranges_html(data: dict[str, Any]) -> str:
    out = [
        '<section id="ranges"><h2>Port ranges</h2><table><tr><th>Host</th><th>Type</th><th>Range</th>'
        "<th>Allocated</th><th></th><th>By environment</th></tr>"
    ]
    for r in data["ranges"]:
        share = r["utilisation"]
        width = 0 if not r["allocated"] else max(2, min(100, round(share * 100)))
        full = " full" if share >= 0.9 else ""
        envs = ", ".join(f"{_e(env)} {n}" for env, n in r["by_environment"].items()) or "-"
        out.append(
            f'<tr data-range="{_e(r["type"])}"><td>{_e(r["host"])}</td><td>{_e(r["type"])}</td>'
            f"<td>{_e(r['range'])}</td><td>{r['allocated']} of {r['size']}</td>"
            f'<td><span class="bar"><span class="{full.strip()}" style="width:{width}%"></span></span></td>'
            f"<td>{envs}</td></tr>"
        )
    out.append("</table></section>")
    return "".join(out)


def _sources(data: dict[str, Any], now: float) -> str:
    out = [
        '<section id="sources"><h2>Sources</h2><table><tr><th>Source</th><th>State</th>'
        "<th>Last success</th><th>Detail</th></tr>"
    ]
    for name, source in data["sources"].items():
        state = "passing" if source["up"] else "critical"
        label = "up" if source["up"] else "down"
        detail = source["error"] or (data["store"]["url"] if name == "store" else "")
        out.append(
            f'<tr data-source="{_e(name)}" data-up="{str(source["up"]).lower()}"><td>{_e(name)}</td>'
            f'<td><span class="pill {state}">{label}</span></td>'
            f"<td>{_e(_when(source['last_success'], now))}</td>"
            f'<td class="muted">{_e(detail)}</td></tr>'
        )
    for notice in data["notices"]:
        out.append(f'<tr><td></td><td></td><td></td><td class="muted">{_e(notice)}</td></tr>')
    out.append(f'</table><p class="muted">Page made {_e(iso_utc(now))}; it reloads itself.</p></section>')
    return "".join(out)
