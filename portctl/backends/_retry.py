"""The one retry policy for calls to a store server (etcd, Consul), and the short cause of a
network failure.

A call that fails with :class:`~portctl.errors.StoreUnavailable` (connection refused or reset,
a timeout, a cluster with no leader) is tried again; nothing else is. A conflict
(:class:`~portctl.errors.VersionConflict`), a refused credential
(:class:`~portctl.errors.StoreDenied`) and bad input are answers, not accidents.

* One server (Consul's agent): :func:`retried` tries once more after a short random pause.
* Several endpoints (etcd): :func:`failover` tries every endpoint in the order given, all
  within the call's time budget. Each try may use the budget that is left, shared equally
  among the endpoints not yet tried in this round, so an endpoint that accepts and never
  answers costs only its share and the endpoints after it are still reached; the last one
  gets all that is left. One that refuses costs nothing. When every endpoint failed and time
  is left, a second round follows a short pause (an election may have ended meanwhile).

Retrying a conditional write never applies it twice: every write portctl sends is guarded by
versions, so one that did land the first time (its answer lost) fails its condition the second
time. That failure is then ours, not a conflict: a store that retried a write checks whether it
holds what was written (:meth:`~portctl.backends.base.Store.landed`) before reporting one.
"""

from __future__ import annotations

import errno
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random

from portctl.errors import StoreUnavailable

__all__ = ["ATTEMPTS", "Exhausted", "failover", "network_cause", "retried"]

T = TypeVar("T")
E = TypeVar("E")

ATTEMPTS = 2  # the first try and one retry (one round over every endpoint, and one more)
PAUSE = (0.02, 0.1)  # seconds, random, before a retry


def retried(call: Callable[[], T], before_retry: Callable[[], None] | None = None) -> T:
    """Run ``call``; on a transient store error run ``before_retry`` and try once more. The
    last error is raised unchanged."""

    def prepare(_state: object) -> None:
        if before_retry is not None:
            before_retry()

    for attempt in Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_random(*PAUSE),
        retry=retry_if_exception_type(StoreUnavailable),
        before_sleep=prepare,
        reraise=True,
    ):
        with attempt:
            return call()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover


class Exhausted(Exception):
    """Every try of :func:`failover` failed: ``failures`` holds each target's last error, in
    the order the targets were given."""

    def __init__(self, failures: dict[object, StoreUnavailable]) -> None:
        super().__init__("every endpoint failed")
        self.failures = failures


def failover(targets: Sequence[E], attempt: Callable[[E, float], T], budget: float) -> T:
    """``attempt(target, seconds)`` on each target in turn until one answers, all within
    ``budget`` seconds; raises :class:`Exhausted` when none did."""
    deadline = time.monotonic() + budget
    failures: dict[object, StoreUnavailable] = {}
    for round_ in range(ATTEMPTS):
        if round_ and not _pause(deadline):
            break
        for target, seconds in _shares(targets, deadline):
            try:
                return attempt(target, seconds)
            except StoreUnavailable as e:
                failures[target] = e
    raise Exhausted(failures)


def _shares(targets: Sequence[E], deadline: float) -> Iterator[tuple[E, float]]:
    for i, target in enumerate(targets):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        yield target, left / (len(targets) - i)


def _pause(deadline: float) -> bool:
    pause = random.uniform(*PAUSE)  # noqa: S311 - jitter, not a secret
    if time.monotonic() + pause >= deadline:
        return False
    time.sleep(pause)
    return True


# Causes --------------------------------------------------------------------------------------

_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed while sending",
}


def network_cause(error: BaseException, timeout: float | None = None) -> str:
    """A short cause for a failed HTTP call - ``connection refused``, ``name not resolved``,
    ``no answer within 5s``, ``TLS failure: certificate verify failed`` - instead of the
    client library's nested exception text."""
    chain = list(_chain(error))
    for cause in chain:
        if isinstance(cause, ssl.SSLError):
            return f"TLS failure: {_tls_reason(cause)}"
        if isinstance(cause, OSError) and _in_tls_handshake(cause):
            # A plain-HTTP server may reset the connection before its answer to the hello
            # arrives (it closed with the hello unread): the same mistake, so the same cause.
            reason = _ERRNO_CAUSES.get(cause.errno or 0, "connection failed")
            return f"TLS failure: {reason} during the handshake (is the server speaking plain HTTP?)"
    for cause in reversed(chain):  # the innermost first: the socket's error, not the pool's
        found = _cause_of(cause, timeout)
        if found:
            return found
    return _last_words(chain[-1])


_NAMED_CAUSES = {
    "NameResolutionError": "name not resolved",
    "RemoteDisconnected": "connection closed without an answer",
    "ProtocolError": "the answer broke off",
    "ChunkedEncodingError": "the answer broke off",
    "IncompleteRead": "the answer broke off",
    "InvalidChunkLength": "the answer broke off",
    "ProxyError": "the proxy failed (check HTTP_PROXY, HTTPS_PROXY and NO_PROXY)",
}
_TIMEOUTS = ("ReadTimeout", "ConnectTimeout", "ReadTimeoutError", "ConnectTimeoutError")


def _cause_of(cause: BaseException, timeout: float | None) -> str | None:
    name = type(cause).__name__
    if isinstance(cause, socket.gaierror):
        return "name not resolved"
    if isinstance(cause, TimeoutError) or name in _TIMEOUTS:
        return f"no answer within {timeout:g}s" if timeout is not None else "timed out"
    if isinstance(cause, OSError) and cause.errno in _ERRNO_CAUSES:
        return _ERRNO_CAUSES[cause.errno]
    return _NAMED_CAUSES.get(name)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and every error inside it: causes, contexts, urllib3's ``reason``, args."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        todo.extend(e for e in inner if isinstance(e, BaseException))


def _in_tls_handshake(error: OSError) -> bool:
    """Whether the error was raised inside ssl's handshake (nothing of the request was sent)."""
    frame = error.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        if code.co_name == "do_handshake" and code.co_filename == ssl.__file__:
            return True
        frame = frame.tb_next
    return False


def _tls_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message}"
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        text = reason.replace("_", " ").lower()
        return f"{text} (is the server speaking plain HTTP?)" if reason == "WRONG_VERSION_NUMBER" else text
    return _last_words(error)


def _last_words(error: BaseException) -> str:
    """The text of an error without the ``[Errno n]``, ``(_ssl.c:123)`` and pool prefixes."""
    text = str(error) or type(error).__name__
    text = text.rsplit("): ", 1)[-1].rsplit("] ", 1)[-1]
    return text.split(" (_ssl.c", 1)[0].strip("()'\" ")[:160] or type(error).__name__
