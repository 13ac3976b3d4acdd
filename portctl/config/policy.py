"""The port policy: service types and their ranges, the standard services, the environments.

The built-in policy: ranges by service type, the standard port of each well-known service of
a shared development host, the development and staging ports of each, and the alternative
ports a moved service takes. A config file (:mod:`portctl.config.settings`) adds services,
types and environments or overrides any of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from portctl import _validate
from portctl.errors import InvalidInput, Kind

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "DEFAULT_SERVICE_TYPE",
    "Policy",
    "ServiceSpec",
    "ServiceType",
    "default_policy",
]

DEFAULT_ENVIRONMENT = "production"
DEFAULT_SERVICE_TYPE = "custom"


@dataclass(frozen=True)
class ServiceType:
    name: str
    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    @property
    def range_text(self) -> str:
        return f"{self.low}-{self.high}"


@dataclass(frozen=True)
class ServiceSpec:
    """What the policy knows of one service: its type, its port per environment, fallbacks."""

    name: str
    type: str = DEFAULT_SERVICE_TYPE
    port: int | None = None  # the standard port, used where no environment port is set
    ports: Mapping[str, int] = field(default_factory=dict)  # environment -> port
    alternatives: tuple[int, ...] = ()
    protocol: str = "tcp"

    def preferred(self, environment: str) -> list[int]:
        """Candidate ports in order: the environment's, the standard, the alternatives."""
        ordered = [self.ports.get(environment), self.port, *self.alternatives]
        out: list[int] = []
        for p in ordered:
            if p is not None and p not in out:
                out.append(p)
        return out


_TYPES = (
    ServiceType("system", 1, 1023),
    ServiceType("user", 1024, 4999),
    ServiceType("database", 5000, 5999),
    ServiceType("cache", 6000, 6999),
    ServiceType("custom", 7000, 7999),
    ServiceType("api", 8000, 8999),
    ServiceType("monitoring", 9000, 9999),
    ServiceType("dynamic", 10000, 65535),
)

_ENVIRONMENTS = ("production", "development", "staging")


def _svc(
    name: str,
    type_: str,
    port: int,
    dev: int | None = None,
    staging: int | None = None,
    alternatives: tuple[int, ...] = (),
) -> ServiceSpec:
    ports = {"production": port}
    if dev is not None:
        ports["development"] = dev
    if staging is not None:
        ports["staging"] = staging
    return ServiceSpec(name, type_, port, ports, alternatives)


# The standard assignments; alternatives are the ports a moved service takes first.
_SERVICES = (
    _svc("postgres", "database", 5432, 5433, 5434, (5433,)),
    _svc("redis", "cache", 6379, 6380, 6381, (6380,)),
    _svc("weaviate", "api", 8080, 8081, 8082, (8081,)),
    _svc("api", "api", 8000, 8010, 8020, (8010,)),
    _svc("admin_ui", "user", 3000, alternatives=(3002,)),
    _svc("grafana", "monitoring", 3001, alternatives=(3003,)),
    _svc("prometheus", "monitoring", 9090, alternatives=(9091,)),
    _svc("nginx_http", "system", 80),
    _svc("nginx_https", "system", 443),
    _svc("mcp_weaviate", "api", 8001),
    _svc("mcp_conductor", "api", 8002),
    _svc("mcp_memory", "api", 8003),
    _svc("mcp_tools", "api", 8006),
)


@dataclass(frozen=True)
class Policy:
    types: Mapping[str, ServiceType]
    services: Mapping[str, ServiceSpec]
    environments: tuple[str, ...]
    default_environment: str = DEFAULT_ENVIRONMENT

    def service_type(self, name: str, field_name: str = Kind("type")) -> ServiceType:
        try:
            return self.types[name]
        except KeyError:
            raise InvalidInput(field_name, name, "one of " + ", ".join(self.types)) from None

    def environment(self, name: str | None, field_name: str = Kind("env")) -> str:
        """``name`` if it is one of the environments; None (not given) is the default one. An
        empty name is refused, not taken for the default: ``--env ""`` is a mistake."""
        env = self.default_environment if name is None else name
        if env not in self.environments:
            raise InvalidInput(field_name, env, "one of " + ", ".join(self.environments))
        return env

    def spec(self, service: str, type_name: str | None = None, protocol: str | None = None) -> ServiceSpec:
        """The spec of ``service``; an unknown one is a ``custom`` service unless a type is given."""
        _validate.service_name(service)
        known = self.services.get(service)
        spec = known or ServiceSpec(service)
        if type_name is not None:
            self.service_type(type_name)
            spec = replace(spec, type=type_name)
        if protocol is not None:
            spec = replace(spec, protocol=_validate.protocol(protocol))
        return spec

    def with_additions(
        self,
        types: Iterable[ServiceType] = (),
        services: Iterable[ServiceSpec] = (),
        environments: Iterable[str] = (),
        default_environment: str | None = None,
    ) -> Policy:
        all_types = {**self.types, **{t.name: t for t in types}}
        all_services = {**self.services, **{s.name: s for s in services}}
        envs = tuple(dict.fromkeys([*self.environments, *environments]))
        default = self.default_environment if default_environment is None else default_environment
        policy = Policy(all_types, all_services, envs, default)
        policy.environment(policy.default_environment, "environment")
        for spec in all_services.values():
            policy.service_type(spec.type, f"services.{spec.name}.type")
        return policy


def default_policy() -> Policy:
    return Policy(
        types={t.name: t for t in _TYPES},
        services={s.name: s for s in _SERVICES},
        environments=_ENVIRONMENTS,
    )
