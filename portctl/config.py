"""Settings: the config file, the store selection order, this host's identity.

The config file is the first of: ``PORTCTL_CONFIG``; ``portctl.toml`` in the current folder or
a parent; ``[tool.portctl]`` in the nearest ``pyproject.toml``. Its keys::

    store = "file:ports/store.json"   # relative file paths are relative to this file
    host = "web-1"                    # this host's name in the store (default: hostname)
    environment = "production"        # default --env
    environments = ["qa"]             # added to production, development, staging
    stack = ["postgres", "redis"]     # what `allocate --all` covers (default: every service)

    [types.ml]
    range = [7500, 7599]

    [services.vector_db]
    type = "database"                 # default "custom"
    port = 5600                       # standard port
    ports = { development = 5601, staging = 5602 }
    alternatives = [5610]
    protocol = "tcp"

The store is chosen in this order, and :func:`resolve_store` says which source won:
``--store`` flag, then ``store`` in the config file, then ``PORTCTL_STORE``, then the default
file (``/var/lib/portctl/store.json`` as root, else ``$XDG_STATE_HOME/portctl/store.json``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from portctl import _validate
from portctl.errors import InvalidInput
from portctl.policy import Policy, ServiceSpec, ServiceType, default_policy

__all__ = [
    "Settings",
    "StoreChoice",
    "default_store_url",
    "find_config",
    "load_settings",
    "resolve_store",
]

CONFIG_ENV = "PORTCTL_CONFIG"
STORE_ENV = "PORTCTL_STORE"
HOST_ENV = "PORTCTL_HOST"
ENV_ENV = "PORTCTL_ENV"


def default_host() -> str:
    name = os.environ.get(HOST_ENV) or socket.gethostname() or "localhost"
    return _validate.host_identity(name, HOST_ENV if os.environ.get(HOST_ENV) else "host")


@dataclass(frozen=True)
class Settings:
    policy: Policy = field(default_factory=default_policy)
    store: str | None = None
    host: str = field(default_factory=default_host)
    stack: tuple[str, ...] = ()
    path: str | None = None  # the config file these came from

    def stack_services(self) -> list[str]:
        return list(self.stack) if self.stack else sorted(self.policy.services)


@dataclass(frozen=True)
class StoreChoice:
    url: str
    source: str  # "--store flag", "config file /x/portctl.toml", "PORTCTL_STORE", "default"


def find_config(start: str | None = None) -> str | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise InvalidInput(CONFIG_ENV, explicit, "the path of an existing portctl.toml")
        return os.path.abspath(explicit)
    folder = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(folder, "portctl.toml")
        if os.path.isfile(candidate):
            return candidate
        pyproject = os.path.join(folder, "pyproject.toml")
        if os.path.isfile(pyproject) and _has_tool_section(pyproject):
            return pyproject
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _has_tool_section(path: str) -> bool:
    with open(path, "rb") as f:
        return b"[tool.portctl" in f.read()


def load_settings(path: str | None = None) -> Settings:
    path = path or find_config()
    if path is None:
        return Settings()
    table = _read_table(path)
    return _settings_from(table, path)


def _read_table(path: str) -> dict[str, Any]:
    import tomllib  # only when a config file exists

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput("config", path, f"valid TOML ({e})") from e
    except OSError as e:
        raise InvalidInput("config", path, f"a readable file ({e.strerror})") from e
    if os.path.basename(path) == "pyproject.toml":
        tool = data.get("tool", {})
        table = tool.get("portctl", {}) if isinstance(tool, dict) else {}
        return table if isinstance(table, dict) else {}
    return data


_KNOWN_KEYS = {"store", "host", "environment", "environments", "stack", "types", "services"}


def _settings_from(table: Mapping[str, Any], path: str) -> Settings:
    unknown = set(table) - _KNOWN_KEYS
    if unknown:
        raise InvalidInput(f"config {path}", sorted(unknown)[0], "one of " + ", ".join(sorted(_KNOWN_KEYS)))
    base = default_policy()
    types = [_type(name, raw) for name, raw in _table(table, "types").items()]
    services = [
        _service(name, raw, base.services.get(name)) for name, raw in _table(table, "services").items()
    ]
    envs = [_env_name(e, "environments") for e in _list(table, "environments")]
    default_env = table.get("environment")
    policy = base.with_additions(types, services, envs, default_env)
    stack = tuple(_validate.service_name(s, "stack") for s in _list(table, "stack"))
    host = _validate.host_identity(table["host"], "host") if "host" in table else default_host()
    return Settings(policy, _store_from_config(table.get("store"), path), host, stack, path)


def _table(table: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = table.get(name, {})
    if not isinstance(value, dict):
        raise InvalidInput(name, value, f"a TOML table ([{name}.NAME])")
    return value


def _list(table: Mapping[str, Any], name: str) -> list[Any]:
    value = table.get(name, [])
    if not isinstance(value, list):
        raise InvalidInput(name, value, "a list")
    return value


def _env_name(value: Any, field_name: str) -> str:
    return _validate.service_name(value, field_name)  # environments follow the same form


def _type(name: str, raw: Any) -> ServiceType:
    where = f"types.{name}"
    _validate.service_name(name, where)
    rng = raw.get("range") if isinstance(raw, dict) else None
    if not (isinstance(rng, list) and len(rng) == 2):
        raise InvalidInput(f"{where}.range", rng, "[low, high], two ports")
    low, high = (_validate.port(p, f"{where}.range") for p in rng)
    if low > high:
        raise InvalidInput(f"{where}.range", rng, "[low, high] with low <= high")
    return ServiceType(name, low, high)


def _service(name: str, raw: Any, known: ServiceSpec | None) -> ServiceSpec:
    where = f"services.{name}"
    _validate.service_name(name, where)
    if not isinstance(raw, dict):
        raise InvalidInput(where, raw, "a TOML table")
    base = known or ServiceSpec(name)
    port = _validate.port(raw["port"], f"{where}.port") if "port" in raw else base.port
    ports = dict(base.ports)
    for env, p in _table(raw, "ports").items():
        ports[_env_name(env, f"{where}.ports")] = _validate.port(p, f"{where}.ports.{env}")
    given = raw.get("alternatives", list(base.alternatives))
    if not isinstance(given, list):
        raise InvalidInput(f"{where}.alternatives", given, "a list of ports, e.g. [5434, 5435]")
    alternatives = tuple(_validate.port(p, f"{where}.alternatives") for p in given)
    protocol = _validate.protocol(raw.get("protocol", base.protocol), f"{where}.protocol")
    type_name = raw.get("type", base.type)
    if not isinstance(type_name, str):
        raise InvalidInput(f"{where}.type", type_name, "a service type name")
    return ServiceSpec(name, type_name, port, ports, alternatives, protocol)


def _store_from_config(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or ("://" not in value and not value.startswith("file:")):
        raise InvalidInput("store", value, "a store URL such as file:ports.json or etcd://127.0.0.1:2379")
    if value.startswith("file:") and not value.startswith("file:/"):
        relative = value.removeprefix("file:")
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(path)), relative)
    return value


def default_store_url() -> str:
    if os.geteuid() == 0:
        folder = "/var/lib/portctl"
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        folder = os.path.join(state, "portctl")
    os.makedirs(folder, mode=0o755, exist_ok=True)
    return "file://" + os.path.join(folder, "store.json")


def resolve_store(flag: str | None, settings: Settings) -> StoreChoice:
    if flag:
        return StoreChoice(_absolute(flag), "--store flag")
    if settings.store:
        return StoreChoice(settings.store, f"config file {settings.path}")
    env = os.environ.get(STORE_ENV)
    if env:
        return StoreChoice(_absolute(env), STORE_ENV)
    return StoreChoice(default_store_url(), "default")


def _absolute(url: str) -> str:
    """Accept a bare path or ``file:relative`` where a URL is expected: both mean a JSON file."""
    if "://" in url:
        return url
    path = url.removeprefix("file:")
    return "file://" + os.path.abspath(path)
