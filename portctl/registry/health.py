"""One health check, one result: what ``portctl agent`` runs for each TCP and HTTP check.

* **tcp**: a connection to the entry's address and port within the check's timeout; when the
  port is held by Docker's userland proxy, the container behind it must accept too
  (:func:`portctl.host.probe.tcp_answer`: docker-proxy accepts even when nothing listens inside).
* **http**: a GET of the check's URL; redirects are followed, and the final response decides:
  2xx is passing, 429 (the service is up but shedding load) is warning, anything else is
  critical, as is a connection error or a timeout. Proxies from the environment
  (``http_proxy``...) are not used: a proxy would report its own health, not the service's.
* **ttl** and **none** checks run nowhere: a TTL's status comes from ``portctl ttl``, and an
  unchecked entry keeps the status it was registered with. :func:`run_check` refuses them.

The HTTP client is imported on the first HTTP check, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portctl.errors import InvalidInput
from portctl.host.probe import reason, tcp_answer
from portctl.registry.entries import ServiceEntry, Status

if TYPE_CHECKING:
    import urllib.request

__all__ = ["RUNNABLE", "run_check"]

RUNNABLE = frozenset({"tcp", "http"})  # the check kinds run_check runs
WARNING_CODES = frozenset({429})


def run_check(entry: ServiceEntry) -> tuple[Status, str]:
    """The result of one check of ``entry``, with a one-line output text.

    Raises :class:`~portctl.errors.InvalidInput` (a ValueError) for a check kind that is not
    run (ttl, none, or a kind this version does not know)."""
    check = entry.check
    if check.kind == "tcp":
        return tcp_check(entry.address, entry.port, check.timeout)
    if check.kind == "http":
        if not check.url:
            return Status.CRITICAL, "http check without a URL"
        return http_check(check.url, check.timeout)
    raise InvalidInput("check", check.kind, "a tcp or http check (ttl and none checks are not run)")


def tcp_check(address: str, port: int, timeout: float) -> tuple[Status, str]:
    answer = tcp_answer(address, port, timeout)
    return (Status.PASSING if answer.ok else Status.CRITICAL), answer.detail


def http_check(url: str, timeout: float) -> tuple[Status, str]:
    import http.client
    import urllib.error

    try:
        with _opener().open(url, timeout=timeout) as response:
            return _http_result(response.status, response.reason)
    except urllib.error.HTTPError as e:  # a final status the client does not take as success
        e.close()
        return _http_result(e.code, str(e.reason))
    except urllib.error.URLError as e:  # before a response: refused, unresolvable, TLS...
        why = e.reason
        return Status.CRITICAL, reason(why, timeout) if isinstance(why, BaseException) else str(why)
    except (OSError, http.client.HTTPException) as e:  # while reading the response
        return Status.CRITICAL, reason(e, timeout)
    except ValueError as e:  # a URL urllib cannot use
        return Status.CRITICAL, f"invalid URL {url}: {e}"


def _opener() -> urllib.request.OpenerDirector:
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_result(code: int, reason: str) -> tuple[Status, str]:
    from http import HTTPStatus

    if not reason:
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = ""
    output = f"HTTP {code} {reason}".rstrip()
    if 200 <= code < 300:
        return Status.PASSING, output
    if code in WARNING_CODES:
        return Status.WARNING, output
    return Status.CRITICAL, output
