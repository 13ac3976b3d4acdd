"""Settings: the config file, the selection order of each setting, this host's identity.

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

A key no table knows (``prot = 5600``) is refused, naming the file, the table and the closest
known key: a typo never passes silently.

Every setting that has a flag, a variable and a config key is chosen in one order: the flag,
then the environment variable, then the config file, then the default. So a variable set in a
shell beats a checked-in config file:

* store: ``--store``, ``PORTCTL_STORE``, ``store``, the default file
  (``/var/lib/portctl/store.json`` as root, else ``$XDG_STATE_HOME/portctl/store.json``);
  :func:`resolve_store` says which source won. Nothing here creates a folder: the JSON store
  creates the default one on its first write, so a read-only command needs no writable home.
* environment: ``--env``, ``PORTCTL_ENV``, ``environment``, ``production``.
* host: ``PORTCTL_HOST``, ``host``, the hostname.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from portctl import _validate
from portctl.config.policy import Policy, ServiceSpec, ServiceType, default_policy
from portctl.errors import InvalidInput, Param

__all__ = [
    "Settings",
    "StoreChoice",
    "default_store_url",
    "find_config",
    "load_settings",
    "resolve_store",
    "store_url",
]

CONFIG_ENV = "PORTCTL_CONFIG"
STORE_ENV = "PORTCTL_STORE"
HOST_ENV = "PORTCTL_HOST"
ENV_ENV = "PORTCTL_ENV"

TOP_KEYS = ("store", "host", "environment", "environments", "stack", "types", "services")
TYPE_KEYS = ("range",)
SERVICE_KEYS = ("type", "port", "ports", "alternatives", "protocol")


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
    source: str  # "--store flag", "PORTCTL_STORE", "config file /x/portctl.toml", "default"


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
    """The settings of the config file (found as :func:`find_config` does), with
    ``PORTCTL_ENV`` and ``PORTCTL_HOST`` over the file's ``environment`` and ``host``."""
    path = path or find_config()
    settings = Settings() if path is None else _from_file(path)
    env = os.environ.get(ENV_ENV)
    if env:
        policy = replace(settings.policy, default_environment=settings.policy.environment(env, ENV_ENV))
        settings = replace(settings, policy=policy)
    return settings


def _from_file(path: str) -> Settings:
    prefix = "tool.portctl." if os.path.basename(path) == "pyproject.toml" else ""
    table = _read_table(path)
    try:
        return _settings_from(table, path, prefix)
    except InvalidInput as e:  # every bad value names the file it is in
        raise InvalidInput(f"{path}: {e.field}", e.value, e.expected) from e


def _read_table(path: str) -> dict[str, Any]:
    import tomllib  # only when a config file exists

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput("config", path, f"valid TOML ({e})") from e
    except ValueError as e:  # an integer beyond Python's digit limit: not TOMLDecodeError
        raise InvalidInput("config", path, f"valid TOML of sensible size ({e})") from e
    except OSError as e:
        raise InvalidInput("config", path, f"a readable file ({e.strerror})") from e
    if os.path.basename(path) == "pyproject.toml":
        tool = data.get("tool", {})
        table = tool.get("portctl", {}) if isinstance(tool, dict) else {}
        if not isinstance(table, dict):
            raise InvalidInput(f"{path}: tool.portctl", table, "a TOML table ([tool.portctl])")
        return table
    return data


def _settings_from(table: Mapping[str, Any], path: str, prefix: str) -> Settings:
    _known_keys(table, TOP_KEYS, prefix.rstrip("."))
    base = default_policy()
    envs = [_env_name(e, f"{prefix}environments") for e in _list(table, "environments", prefix)]
    all_envs = list(dict.fromkeys([*base.environments, *envs]))
    types = [_type(name, raw, prefix) for name, raw in _table(table, "types", prefix).items()]
    services = [
        _service(name, raw, base.services.get(name), prefix, all_envs)
        for name, raw in _table(table, "services", prefix).items()
    ]
    policy = base.with_additions(types, services, envs, table.get("environment"))
    stack = tuple(_stack_entry(s, policy, prefix) for s in _list(table, "stack", prefix))
    host = _host(table, prefix)
    return Settings(policy, _store_from_config(table.get("store"), path, prefix), host, stack, path)


def _stack_entry(name: Any, policy: Policy, prefix: str) -> str:
    """A known service: built in, or given a ``[services.NAME]`` table (which may be empty)."""
    _validate.service_name(name, f"{prefix}stack")
    if name not in policy.services:
        more = "; a new service needs a [services.NAME] table"
        raise _unknown(name, sorted(policy.services), f"{prefix}stack", "a known service", more)
    return str(name)


def _host(table: Mapping[str, Any], prefix: str) -> str:
    """``PORTCTL_HOST`` beats the file's ``host``, which beats the hostname."""
    if os.environ.get(HOST_ENV) or "host" not in table:
        return default_host()
    return _validate.host_identity(table["host"], f"{prefix}host")


def _known_keys(table: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse a key the table does not have, naming the closest one it does."""
    known = list(known)
    for key in table:
        if key not in known:
            label = f"[{where}]" if where else "the top level"
            raise _unknown(key, known, label, f"a key of {label}")


def _unknown(key: str, known: list[str], where: str, what: str, more: str = "") -> InvalidInput:
    import difflib  # only for an error

    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return InvalidInput(where, key, f"{what}: {hint}(one of {', '.join(known)}{more})")


def _table(table: Mapping[str, Any], name: str, prefix: str) -> dict[str, Any]:
    value = table.get(name, {})
    if not isinstance(value, dict):
        raise InvalidInput(prefix + name, value, f"a TOML table ([{prefix}{name}.NAME])")
    return value


def _list(table: Mapping[str, Any], name: str, prefix: str) -> list[Any]:
    value = table.get(name, [])
    if not isinstance(value, list):
        raise InvalidInput(prefix + name, value, "a list")
    return value


def _env_name(value: Any, field_name: str) -> str:
    return _validate.service_name(value, field_name)  # environments follow the same form


def _type(name: str, raw: Any, prefix: str) -> ServiceType:
    where = f"{prefix}types.{name}"
    _validate.service_name(name, where)
    if isinstance(raw, dict):
        _known_keys(raw, TYPE_KEYS, where)
    rng = raw.get("range") if isinstance(raw, dict) else None
    if not (isinstance(rng, list) and len(rng) == 2):
        raise InvalidInput(f"{where}.range", rng, "[low, high], two ports")
    low, high = (_validate.port(p, f"{where}.range") for p in rng)
    if low > high:
        raise InvalidInput(f"{where}.range", rng, "[low, high] with low <= high")
    return ServiceType(name, low, high)


def _service(
    name: str, raw: Any, known: ServiceSpec | None, prefix: str, environments: list[str]
) -> ServiceSpec:
    where = f"{prefix}services.{name}"
    _validate.service_name(name, where)
    if not isinstance(raw, dict):
        raise InvalidInput(where, raw, "a TOML table")
    _known_keys(raw, SERVICE_KEYS, where)
    base = known or ServiceSpec(name)
    port = _validate.port(raw["port"], f"{where}.port") if "port" in raw else base.port
    ports = dict(base.ports)
    for env, p in _table(raw, "ports", f"{where}.").items():
        if env not in environments:
            raise _unknown(env, environments, f"[{where}.ports]", "an environment")
        ports[env] = _validate.port(p, f"{where}.ports.{env}")
    given = raw.get("alternatives", list(base.alternatives))
    if not isinstance(given, list):
        raise InvalidInput(f"{where}.alternatives", given, "a list of ports, e.g. [5434, 5435]")
    alternatives = tuple(_validate.port(p, f"{where}.alternatives") for p in given)
    protocol = _validate.protocol(raw.get("protocol", base.protocol), f"{where}.protocol")
    type_name = raw.get("type", base.type)
    if not isinstance(type_name, str):
        raise InvalidInput(f"{where}.type", type_name, "a service type name")
    return ServiceSpec(name, type_name, port, ports, alternatives, protocol)


def _store_from_config(value: Any, path: str, prefix: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or ("://" not in value and not value.startswith("file:")):
        raise InvalidInput(
            prefix + "store", value, "a store URL such as file:ports.json or etcd://127.0.0.1:2379"
        )
    if value.startswith("file:") and not value.startswith("file:/"):
        relative = value.removeprefix("file:")
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(path)), relative)
    return value


def default_store_url() -> str:
    """The default JSON file's URL. Its folder may not exist yet: the store creates it on its
    first write, so a read-only command works for a user without a writable home."""
    from portctl.backends.file import default_path

    return "file://" + default_path()


def resolve_store(flag: str | None, settings: Settings) -> StoreChoice:
    """The store to use, and why: ``--store``, then ``PORTCTL_STORE``, then the config file's
    ``store``, then the default file."""
    if flag:
        return StoreChoice(store_url(flag), "--store flag")
    env = os.environ.get(STORE_ENV)
    if env:
        return StoreChoice(store_url(env), STORE_ENV)
    if settings.store:
        _check_config_store(settings.store, settings.path)
        return StoreChoice(settings.store, f"config file {settings.path}")
    return StoreChoice(default_store_url(), "default")


def _check_config_store(url: str, path: str | None) -> None:
    """A config file's JSON store in a missing folder, refused with the fixes that would work:
    the file's ``store`` key, the folder, or an override by flag or variable."""
    if not url.startswith("file:"):
        return
    from portctl.backends.file import path_from_url

    folder = os.path.dirname(path_from_url(url))
    if not os.path.isdir(folder):
        raise InvalidInput(
            f"{path}: store",
            url,
            (
                f"a path in an existing folder ({folder} does not exist: create it, change store in "
                f"{path}, or override it with ",
                Param("store"),
                f" or {STORE_ENV})",
            ),
        )


def store_url(url: str) -> str:
    """Accept a bare path or ``file:relative`` where a URL is expected: both mean a JSON file."""
    if "://" in url:
        return url
    path = url.removeprefix("file:")
    return "file://" + os.path.abspath(path)
