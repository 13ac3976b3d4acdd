"""A compose stack joined with its allocations: names, moves, and what an older Compose needs."""

from __future__ import annotations

import textwrap

import pytest

from portctl.compose.deploy import ComposeTool, plan_override
from portctl.compose.project import load_compose
from portctl.compose.stack import override_ports, reversed_mappings, stack_ports, unallocated_ports
from portctl.errors import InvalidInput
from portctl.ports.allocator import Allocation

BASE = """\
name: shop
services:
  postgres:
    image: postgres
    ports: ["5432:5432"]
  redis:
    image: redis
    ports: ["${REDIS_PORT:-6379}:6379"]
  nginx:
    image: nginx
    ports: ["${NGINX_HTTP_PORT:-80}:80", "443:443"]
"""


@pytest.fixture
def project(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text(textwrap.dedent(BASE))
    return load_compose([str(path)], environ={})


def _alloc(service: str, port: int) -> Allocation:
    return Allocation(service, "production", "h", port, "tcp", "custom", "2026-01-01T00:00:00Z")


def test_ports_are_named_after_their_variable_or_service(project):
    names = {sp.name: (sp.mapping.service, sp.declared) for sp in stack_ports(project)}
    assert names == {
        "postgres": ("postgres", 5432),
        "redis": ("redis", 6379),
        "nginx_http": ("nginx", 80),
        "nginx_443": ("nginx", 443),
    }


def test_override_lists_the_whole_ports_list_of_moved_services(project):
    moved = override_ports(
        project,
        {
            "postgres": _alloc("postgres", 5433),
            "redis": _alloc("redis", 6379),
            "nginx_http": _alloc("nginx_http", 8080),
            "nginx_443": _alloc("nginx_443", 443),
        },
    )
    assert sorted(moved) == ["nginx", "postgres"]
    assert [(m.published, m.target) for m in moved["nginx"]] == [(8080, 80), (443, 443)]
    assert [(m.published, m.target) for m in moved["postgres"]] == [(5433, 5432)]


def test_a_partial_set_of_allocations_moves_what_is_allocated_and_leaves_the_rest(project):
    partial = {"postgres": _alloc("postgres", 5433), "nginx_443": _alloc("nginx_443", 8443)}
    moved = override_ports(project, partial)
    assert sorted(moved) == ["nginx", "postgres"]
    assert [(m.published, m.target) for m in moved["nginx"]] == [(80, 80), (8443, 443)]
    assert [(sp.name, sp.declared) for sp in unallocated_ports(project, partial)] == [
        ("redis", 6379),
        ("nginx_http", 80),
    ]
    assert override_ports(project, {}) == {}
    assert len(unallocated_ports(project, {})) == 4


def _allocations(**ports: int) -> dict[str, Allocation]:
    base = {"postgres": 5432, "redis": 6379, "nginx_http": 80, "nginx_443": 443}
    return {name: _alloc(name, port) for name, port in {**base, **ports}.items()}


def test_older_compose_is_told_what_it_needs(project):
    old = ComposeTool(("docker-compose",), (2, 20, 0))
    with pytest.raises(InvalidInput) as err:
        plan_override(project, _allocations(postgres=5433), old)
    text = str(err.value)
    assert "Docker Compose 2.20.0 merges ports lists" in text
    assert '"${POSTGRES_PORT:-5432}:5432"' in text
    assert "portctl env > .env" in text


def test_a_move_through_a_variable_needs_no_override_with_any_compose(project):
    for tool in (
        ComposeTool(("docker-compose",), (2, 20, 0)),
        ComposeTool(("docker", "compose"), (2, 40, 3)),
    ):
        plan = plan_override(project, _allocations(redis=6380), tool)
        assert not plan.needed
        assert plan.text == ""


def test_new_compose_gets_an_override_tag(project):
    plan = plan_override(project, _allocations(postgres=5433), ComposeTool(("docker", "compose"), (2, 24, 0)))
    assert plan.replace
    assert "ports: !override" in plan.text
    assert '"5433:5432"' in plan.text


def test_reversed_mapping_is_caught(project, tmp_path):
    path = tmp_path / "rev.yml"
    path.write_text("services:\n  postgres:\n    image: postgres\n    ports: ['5432:5433']\n")
    reversed_project = load_compose([str(path)], environ={})
    with pytest.raises(
        InvalidInput, match='HOST:CONTAINER: 5433 is postgres.s host port, so write "5433:5432"'
    ):
        reversed_mappings(stack_ports(reversed_project), {"postgres": _alloc("postgres", 5433)})
