"""Compose files built to exhaust a YAML reader — alias bombs, deep nesting, huge scalars — and
the YAML constructs Compose itself refuses (duplicated keys, non-string service names, Python
tags): each is refused with a short message naming the problem, quickly, never a Traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from portctl.compose.project import load_compose
from portctl.errors import InvalidInput

MESSAGE_LIMIT = 600  # no message may be longer than this, whatever the file holds


def write(folder: Path, text: str, name: str = "docker-compose.yml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def alias_bomb(levels: int, key: str = "ports") -> str:
    """The billion-laughs shape: each level a list of nine aliases of the level below (~1 KB)."""
    lines = ['x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"x{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    return "\n".join([*lines, "services:", "  web:", "    image: x", f"    {key}: *a{levels - 1}", ""])


def refused(folder: Path, text: str) -> InvalidInput:
    path = write(folder, text)
    with pytest.raises(InvalidInput) as caught:
        load_compose([path], environ={})
    message = str(caught.value)
    assert len(message) <= MESSAGE_LIMIT, message[:1000]
    assert path in message
    return caught.value


@pytest.mark.parametrize("key", ["ports", "environment"])
def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path, key):
    text = alias_bomb(10, key)
    assert len(text) < 1100
    error = refused(tmp_path, text)
    assert "aliases" in str(error)
    assert "lol" not in str(error)


def test_a_merge_key_bomb_is_refused(tmp_path):
    lines = ["x0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
    for level in range(1, 12):
        merges = ", ".join([f"*m{level - 1}"] * 9)
        lines.append(f"x{level}: &m{level} {{<<: [{merges}], k{level}: 1}}")
    error = refused(tmp_path, "\n".join([*lines, "services: {}", ""]))
    assert "aliases" in str(error)


def test_a_recursive_alias_is_refused(tmp_path):
    error = refused(tmp_path, "x: &a [*a]\nservices:\n  web:\n    ports: *a\n")
    assert "contains itself" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "services: " + "[" * 20000 + "]" * 20000 + "\n",
        "services: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n",
        "services:\n  web:\n    ports:\n" + "".join("  " * (i + 3) + "- \n" for i in range(300)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_deep_nesting_is_refused_at_a_bounded_depth(tmp_path, text):
    error = refused(tmp_path, text)
    assert "nested deeper than" in str(error)
    assert "line 1" in str(error) or "line " in str(error)


def test_moderate_anchors_and_merge_keys_are_read_as_compose_reads_them(tmp_path):
    path = write(
        tmp_path,
        "x-web: &web\n  image: nginx\n  ports: &ports ['8080:80']\n"
        "services:\n  a:\n    <<: *web\n  b:\n    <<: *web\n    ports: ['9090:90']\n  c:\n    ports: *ports\n",
    )
    project = load_compose([path], environ={})
    assert {s: [m.published for m in ms] for s, ms in project.services.items()} == {
        "a": [8080],
        "b": [9090],
        "c": [8080],
    }


def test_a_huge_scalar_is_never_echoed_whole(tmp_path):
    error = refused(tmp_path, f'services:\n  web:\n    ports: ["{"9" * 200_000}:80"]\n')
    assert "services.web.ports[0]" in str(error)
    assert "…" in str(error)


def test_a_huge_long_syntax_value_is_never_echoed_whole(tmp_path):
    error = refused(
        tmp_path, f'services:\n  web:\n    ports: [{{target: 80, published: "{"x" * 100_000}"}}]\n'
    )
    assert "services.web.ports[0]" in str(error)


def test_a_huge_service_name_is_never_echoed_whole(tmp_path):
    error = refused(tmp_path, f"services:\n  ? {'w' * 100_000}\n  : 7\n")
    assert "services." in str(error)


def test_a_huge_wrong_ports_value_is_never_echoed_whole(tmp_path):
    entries = ", ".join(f"k{i}: v{i}" for i in range(20_000))
    error = refused(tmp_path, f"services:\n  web:\n    ports: {{{entries}}}\n")
    assert "services.web.ports" in str(error)


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path):
    error = refused(tmp_path, "services: {}\n" + "#" * (5 * 1024 * 1024) + "\n")
    assert "MiB" in str(error)


def test_deeply_nested_interpolation_is_refused(tmp_path):
    value = "${A:-" * 2000 + "8080" + "}" * 2000
    error = refused(tmp_path, f'services:\n  web:\n    ports: ["{value}:80"]\n')
    assert "nested" in str(error)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("services:\n  web:\n    image: x\n    ports: ['8080:80']\n    ports: ['9090:80']\n", "line 5"),
        ("services:\n  web:\n    image: x\n  web:\n    image: y\n", "line 4"),
        ("services: {}\nservices: {}\n", "line 2"),
    ],
)
def test_a_duplicated_key_is_refused_as_compose_refuses_it(tmp_path, text, line):
    error = refused(tmp_path, text)
    assert "given twice" in str(error)
    assert line in str(error)


@pytest.mark.parametrize(
    ("key", "shown"), [("1", "1 is not valid"), ("~", "null"), ("'bad name!'", "'bad name!'")]
)
def test_a_service_name_compose_refuses_is_refused(tmp_path, key, shown):
    error = refused(tmp_path, f"services:\n  {key}:\n    image: x\n    ports: ['8080:80']\n")
    assert "service name" in str(error)
    assert shown in str(error)


@pytest.mark.parametrize(
    "tag",
    ["!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!python/tuple [1, 2]"],
)
def test_python_tags_are_refused_not_run(tmp_path, tag):
    error = refused(tmp_path, f"services:\n  web:\n    ports: {tag}\n")
    assert "python" in str(error)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("services:\n  web:\n    ports: !!set {'8080:80': null}\n", "a list of ports"),
        ("services:\n  web:\n    ports: [!!binary aGVsbG8=]\n", "not a bytes"),
        ("services:\n  web:\n    ports: [{target: 80, published: !!float 8080}]\n", "published is a float"),
        ("name: !!timestamp 2001-12-14\nservices: {}\n", "a string (the project name)"),
        ("services:\n  web:\n    ports: [{target: 80, 8080: 1}]\n", "unknown key '8080'"),
    ],
)
def test_other_yaml_types_are_refused_by_what_they_are(tmp_path, text, reason):
    assert reason in str(refused(tmp_path, text))


def test_override_and_reset_tags_on_anchored_nodes(tmp_path):
    base = write(tmp_path, "services:\n  a:\n    ports: ['1000:10']\n  b:\n    ports: ['2000:20']\n")
    override = write(
        tmp_path,
        "services:\n  a:\n    ports: &p !override ['1001:10']\n  b:\n    ports: !reset\n  c:\n    ports: *p\n",
        "override.yml",
    )
    project = load_compose([base, override], environ={})
    assert {s: [m.published for m in ms] for s, ms in project.services.items()} == {
        "a": [1001],
        "b": [],
        "c": [1001],
    }


@pytest.mark.parametrize(
    "entry", ["9" * 5000, "{target: " + "9" * 5000 + "}", '"' + "9" * 5000 + ':80"', '"0000008080:80"']
)
def test_an_integer_of_thousands_of_digits_is_refused_not_a_crash(tmp_path, entry):
    path = write(tmp_path, f"services:\n  web:\n    ports: [{entry}]\n")
    if entry.startswith('"0'):  # leading zeros are not digits too many: Compose reads 8080
        assert [m.published for m in load_compose([path], environ={}).mappings()] == [8080]
        return
    error = refused(tmp_path, f"services:\n  web:\n    ports: [{entry}]\n")
    assert "digits" in str(error) or "not from 1 to 65535" in str(error)
