"""A Consul HTTP API emulator: one agent that is also its own server, in the standard library.

It follows Consul's documented semantics for the part of the HTTP API portctl's Consul store
uses, so any Consul client (py-consul, ``curl``, consul-template...) can be pointed at it, the
way moto serves AWS:

* agent services with checks: ``PUT /v1/agent/service/register`` (``Check``/``Checks``: HTTP,
  TCP and TTL; ``Interval``, ``Timeout``, ``Status``, ``DeregisterCriticalServiceAfter``,
  ``SuccessBeforePassing``, ``FailuresBeforeCritical``; ``?replace-existing-checks``),
  ``PUT /v1/agent/service/deregister/:id``, ``GET /v1/agent/services``,
  ``GET /v1/agent/service/:id``, ``GET /v1/agent/checks`` (the agent's own: not ``serfHealth``),
  ``PUT /v1/agent/check/register`` (``ID`` defaults to ``Name``; a ``ServiceID`` must exist) and
  ``/v1/agent/check/deregister/:id``; several checks per service (``service:<id>:<n>``);
  maintenance mode (``PUT /v1/agent/maintenance`` and ``/v1/agent/service/maintenance/:id``,
  ``?enable``, ``?reason``: a critical ``_node_maintenance`` or ``_service_maintenance:<id>``
  check); HTTP, TCP and (with ``enable_script_checks``) script checks are run by the
  emulator on their interval (2xx passing, 429 warning, anything else critical; a script's
  exit 0 passing, 1 warning, else critical); TTL checks
  turn critical when not updated in time (``PUT /v1/agent/check/pass|warn|fail/:id``,
  ``PUT /v1/agent/check/update/:id``), with Consul's output ``TTL expired (last output before
  timeout follows): ...``; a service whose check has been critical for longer than its
  ``DeregisterCriticalServiceAfter`` (at least 1m, Consul's minimum) is deregistered by a reaper
  that runs every 30s, as Consul's does;
* health and catalog: ``GET /v1/health/service/:name`` (``?passing``, ``?tag``),
  ``GET /v1/health/state/:state``, ``GET /v1/health/checks/:name``, ``GET /v1/health/node/:node``,
  ``GET /v1/catalog/services``, ``/v1/catalog/service/:name``, ``/v1/catalog/nodes``,
  ``/v1/catalog/node/:node``, ``PUT /v1/catalog/register`` and ``/v1/catalog/deregister`` (other
  nodes, their services and checks); ``?filter`` expressions (go-bexpr's selectors, ``==``,
  ``!=``, ``in``, ``contains``, ``matches``, ``is empty``, ``and``/``or``/``not``); ``?peer``
  finds nothing (no peering); ``?dc`` other than ``dc1`` is ``500 No path to datacenter``;
* agent: ``/v1/agent/self`` (``Stats.consul.leader_addr``), ``/v1/agent/members``,
  ``/v1/agent/reload``, ``/v1/agent/leave`` (the emulator shuts down), ``/v1/agent/force-leave``;
* KV: ``GET``/``PUT``/``DELETE /v1/kv/:key`` with ``recurse``, ``keys`` (``separator``),
  ``raw``, ``cas``, ``flags``, ``acquire`` and ``release``; an empty value reads back as ``null``;
* sessions: ``PUT /v1/session/create|destroy/:id|renew/:id``, ``GET /v1/session/info/:id``,
  ``GET /v1/session/list``, ``GET /v1/session/node/:node``; TTLs between ``session_ttl_min`` (10s, as Consul) and 24h, expired
  at twice their TTL as Consul does; behaviours ``release`` and ``delete``; lock-delay;
* ``PUT /v1/txn`` with KV verbs (set, cas, lock, unlock, get, get-tree, check-index,
  check-session, check-not-exists, delete, delete-tree, delete-cas), at most 64 operations,
  ``409`` with ``{"Results": null, "Errors": [{"OpIndex": i, "What": ...}]}`` on rollback;
* blocking queries (``?index=`` and ``?wait=``, default 5m, at most 10m, plus up to wait/16 of
  jitter) with ``X-Consul-Index`` on KV, health, catalog and session reads;
* ``GET /v1/status/leader``; with no leader every server read fails with
  ``500 No cluster leader`` unless it asks for ``?stale`` (then ``X-Consul-KnownLeader: false``),
  and writes fail;
* ACLs: started with a token, every request but ``/v1/status/*`` needs it in the
  ``X-Consul-Token`` header (or ``Authorization: Bearer``); without one the answer is
  ``403 Permission denied``, with a wrong one ``403 ACL not found``.

Tests steer what Consul itself cannot be asked to do through methods of :class:`ConsulState`
(``server.state``; ``reap_min`` and ``reap_interval`` shorten the reaper's minimum and period)
and of the server (:meth:`ConsulEmulator.drop_next_reply`, :meth:`ConsulEmulator.connections`)
or, from another process, through endpoints outside Consul's API:
``PUT /v1/emulator/reset-index?to=N`` (every index drops to at most N, as after a snapshot
restore: blocking queries return at once with the lower index),
``PUT /v1/emulator/leader?present=false|true`` and
``PUT /v1/emulator/drop-next-reply?path=/v1/txn`` (the next request to that path is applied,
then its connection is closed without an answer, as when a reply is lost).

Start it on its own::

    python -m tests.support.consul_emulator --port 8500 [--acl-token T] [--session-ttl-min 10s]

then ``CONSUL_HTTP_ADDR=127.0.0.1:8500 consul kv put a b`` or any other client works against it.

Inside: :mod:`._state` holds the data (KV, sessions, services and checks, indexes) behind one
lock; :mod:`._api` maps each route to a change or a read of that state, with no sockets;
:mod:`._filter` compiles ``?filter=`` expressions; :mod:`._server` is the threading HTTP server,
its check runner, start and stop, and the command line. Relative imports only: py-consul's suite
loads this package by its path under another name (see ``consul_conformance``).
"""

from ._api import ConsulAPI
from ._server import ConsulEmulator, main
from ._state import VERSION, ConsulError, ConsulState, parse_duration

__all__ = ["VERSION", "ConsulAPI", "ConsulEmulator", "ConsulError", "ConsulState", "main", "parse_duration"]
