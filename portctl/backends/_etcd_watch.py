"""The etcd store's change feed: one watch stream, read by a thread into a queue.

A stream stays open between a reader's calls, so a change costs no request; a compacted
position ends it with ``reset=True`` (the reader re-reads with a snapshot); a member that
vanishes silently is found by TCP keep-alive probes.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import requests
from etcd3gw.exceptions import Etcd3Exception

from portctl.backends._etcd_gateway import Connection, entry_of, unb64
from portctl.backends._retry import network_cause
from portctl.backends.base import Change, ChangeBatch
from portctl.errors import PortctlError, StoreUnavailable

__all__ = ["Follower", "batch_of", "change_of", "socket_of"]


class Follower:
    """One open etcd watch stream; a daemon thread reads it into a queue."""

    def __init__(
        self, connection: Connection, root: str, prefix: str, position: str, response: requests.Response
    ) -> None:
        self.connection = connection
        self.root = root  # the store's key prefix, "/portctl/"
        self.prefix = prefix
        self.position = position  # the last position handed out
        self.response = response
        self.items: queue.Queue[ChangeBatch | Exception] = queue.Queue()
        self.closed = False
        self._keep_alive(socket_of(response))
        self.thread = threading.Thread(target=self._read, name="portctl-etcd-watch", daemon=True)
        self.thread.start()

    def next(self, timeout: float) -> ChangeBatch | Exception | None:
        try:
            item = self.items.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if isinstance(item, ChangeBatch) and not item.reset:
            self.position = item.position
        return item

    def _read(self) -> None:
        endpoint = self.connection.endpoint
        try:
            for message in stream_messages(self.response):
                batch = batch_of(self.connection, self.root, message)
                if batch is not None:
                    self.items.put(batch)
                    if batch.reset:
                        return
            ended: Exception = StoreUnavailable(f"etcd at {endpoint} ended the watch stream")
        except PortctlError as e:
            ended = e
        except Exception as e:  # noqa: BLE001 - whatever ends the stream must reach the reader
            ended = StoreUnavailable(f"etcd at {endpoint} dropped the watch ({network_cause(e)})")
        if not self.closed:
            self.items.put(ended)

    @staticmethod
    def _keep_alive(sock: socket.socket | None) -> None:
        """A member that vanishes without a reset (power loss, partition) would leave the stream
        silent for ever; TCP keep-alive probes end it within about 25 s."""
        if sock is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    def close(self) -> None:
        """Stop reading: shut the socket down (a blocked read returns), then close."""
        if self.closed:
            return
        self.closed = True
        self.items.put(StoreUnavailable("the watch was closed"))  # wakes a reader waiting in next()
        sock = socket_of(self.response)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=2)
        self.response.close()


def batch_of(connection: Connection, root: str, message: Mapping[str, Any]) -> ChangeBatch | None:
    """The change batch one watch message carries, if any; raises for an ended watch."""
    result = message.get("result") or {}
    if "error" in message:
        raise connection.translate(Etcd3Exception(json.dumps(message["error"])))
    if result.get("compact_revision") not in (None, "0", 0):
        # Too old: the reader re-reads with snapshot(), which gives the position.
        return ChangeBatch(str(result["compact_revision"]), (), reset=True)
    if result.get("canceled"):
        reason = result.get("cancel_reason") or "the watch was cancelled"
        raise StoreUnavailable(f"etcd at {connection.endpoint} ended the watch: {reason}")
    events = result.get("events") or []
    if not events:
        return None
    changes = tuple(change_of(event, root) for event in events)
    return ChangeBatch(str(max(int(event["kv"]["mod_revision"]) for event in events)), changes)


def change_of(event: Mapping[str, Any], root: str) -> Change:
    kv = event["kv"]
    key = unb64(kv["key"])[len(root) :]
    if event.get("type") == "DELETE":
        return Change("delete", key, None)
    return Change("put", key, entry_of(kv, root))


def socket_of(response: requests.Response) -> socket.socket | None:
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def stream_messages(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON messages of a gateway stream, one per line, as they arrive."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
