"""The etcd store's URL and etcdctl's variables, read into :class:`EtcdOptions`.

A password is never accepted in the URL (it would show in argv and a process list): it comes
from ``ETCDCTL_PASSWORD``, ``ETCDCTL_USER=user:password`` or ``?password_file=FILE``; an error
about a URL with an ``@`` in it never echoes a part that could be one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from portctl import _validate
from portctl.errors import InvalidInput, Kind

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TIMEOUT", "PASSWORD_HELP", "URL_FORM", "EtcdOptions", "parse_url"]

DEFAULT_PREFIX = "portctl"
DEFAULT_TIMEOUT = 5.0
URL_FORM = "etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?timeout=SECONDS] (or etcd+https://...)"
PASSWORD_HELP = "the password in ETCDCTL_PASSWORD, ETCDCTL_USER=user:password or ?password_file=FILE"  # noqa: S105 - help text

_PASSWORD_IN_URL = re.compile(r"^[a-z+]+://[^@/?#,]*:[^@/?#]*@")


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[str, ...]  # "http://127.0.0.1:2379"
    prefix: str  # "/portctl/"
    timeout: float = DEFAULT_TIMEOUT
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def url(self) -> str:
        tls = self.endpoints[0].startswith("https://")
        hosts = ",".join(e.split("://", 1)[1] for e in self.endpoints)
        user = f"{self.user}@" if self.user else ""
        return f"etcd{'+https' if tls else ''}://{user}{hosts}{self.prefix.rstrip('/')}"


def parse_url(url: str, environ: Mapping[str, str] | None = None) -> EtcdOptions:
    """Options from an ``etcd://`` URL and etcdctl's variables; secrets never from the URL."""
    env = os.environ if environ is None else environ
    if _PASSWORD_IN_URL.match(url):
        # Checked before parsing: a '#' or '/' in a password would cut the URL short.
        raise InvalidInput(
            "store URL", "etcd://USER:***@...", f"no password in the URL; give {PASSWORD_HELP}"
        )
    if not _validate.one_line(url) or any(ch.isspace() for ch in url):
        # urlsplit would drop tabs and newlines, not refuse them
        shown = "(not shown: the URL may hold a password)" if "@" in url else url
        raise InvalidInput("store URL", shown, f"{URL_FORM}, on one line with no spaces")
    try:
        parts = urlsplit(url)
    except ValueError:  # a stray or empty bracket
        raise InvalidInput(Kind("store"), "(not shown)" if "@" in url else url, URL_FORM) from None
    if parts.scheme not in ("etcd", "etcd+https"):
        raise InvalidInput(Kind("store"), url, URL_FORM)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if ":" in userinfo:
        raise InvalidInput("store URL", _redacted(url), f"no password in the URL; give {PASSWORD_HELP}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"timeout", "cacert", "cert", "key", "password_file"}
    if unknown:
        raise InvalidInput(
            "store URL option", sorted(unknown)[0], "timeout, cacert, cert, key or password_file"
        )
    tls = parts.scheme == "etcd+https"
    # With an '@' in the URL, a value in an error could be part of a password: never show it.
    endpoints = _endpoints(hosts, env, tls, secret="@" in url)
    user, password = _credentials(userinfo, query, env)
    return EtcdOptions(
        endpoints=endpoints,
        prefix=_prefix(parts.path),
        timeout=_validate.call_timeout(query.get("timeout"), DEFAULT_TIMEOUT),
        user=user,
        password=password,
        cacert=_file(query.get("cacert") or env.get("ETCDCTL_CACERT"), "cacert (ETCDCTL_CACERT)"),
        cert=_file(query.get("cert") or env.get("ETCDCTL_CERT"), "cert (ETCDCTL_CERT)"),
        key=_file(query.get("key") or env.get("ETCDCTL_KEY"), "key (ETCDCTL_KEY)"),
    )


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        return url
    return url.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{hosts}", 1)


def _endpoints(hosts: str, env: Mapping[str, str], tls: bool, secret: bool = False) -> tuple[str, ...]:
    source = "store URL"
    if not hosts:
        hosts, source = env.get("ETCDCTL_ENDPOINTS", ""), "ETCDCTL_ENDPOINTS"
    if not hosts:
        raise InvalidInput("store URL", "etcd://", f"{URL_FORM}, or ETCDCTL_ENDPOINTS set")
    secret = secret or "@" in hosts  # credentials in an endpoint: never echo any part of it
    found = []
    for item in hosts.split(","):
        scheme, sep, address = item.strip().rpartition("://")
        scheme = scheme if sep else ("https" if tls else "http")
        host, colon, port = address.rstrip("/").rpartition(":")
        bad = not (_is_port(port) and _is_host(host.strip("[]"))) if secret else False
        if scheme not in ("http", "https") or not colon or bad:
            shown = "(not shown: the URL may hold a password)" if secret else item
            raise InvalidInput(source, shown, "endpoints as HOST:PORT, separated by commas, and no password")
        _validate.port(port, f"{source} port")
        _validate.host(host.strip("[]"), f"{source} host")
        found.append(f"{scheme}://{host}:{port}")
    return tuple(found)


def _is_host(text: str) -> bool:
    try:
        _validate.host(text)
    except InvalidInput:
        return False
    return True


def _is_port(text: str) -> bool:
    try:
        _validate.port(text)
    except InvalidInput:
        return False
    return True


def _prefix(path: str) -> str:
    name = path.strip("/") or DEFAULT_PREFIX
    try:
        _validate.key(name)
    except InvalidInput:
        raise InvalidInput(
            "store URL prefix", path, "a key prefix like /portctl or /team-a/portctl"
        ) from None
    return f"/{name}/"


def _credentials(
    userinfo: str, query: Mapping[str, str], env: Mapping[str, str]
) -> tuple[str | None, str | None]:
    env_user, _, env_password = env.get("ETCDCTL_USER", "").partition(":")
    user = userinfo or env_user or None
    password = env.get("ETCDCTL_PASSWORD") or env_password or None
    password_file = _file(query.get("password_file"), "password_file")
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as f:
                password = f.read().strip()
        except (OSError, UnicodeDecodeError):
            raise InvalidInput("password_file", password_file, "a readable UTF-8 text file") from None
    if user and not password:
        raise InvalidInput("etcd password", f"user {user}", PASSWORD_HELP)
    return user, password if user else None


def _file(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    if not os.path.isfile(path):
        raise InvalidInput(what, path, "a readable file that exists")
    return path
