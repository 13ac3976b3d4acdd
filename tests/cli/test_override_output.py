"""portctl override -o: a path that cannot be written is bad input naming --output, never a
traceback, and nothing else is written."""

from __future__ import annotations

import pytest

COMPOSE = "services:\n  web:\n    image: busybox\n    ports:\n      - '8080:80'\n"


@pytest.mark.parametrize("where", ["missing/dir/o.yml", "folder"])
def test_an_unwritable_output_is_refused_naming_the_option(run, tmp_path, where: str) -> None:
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    (tmp_path / "folder").mkdir()
    result = run("override", "-f", "docker-compose.yml", "-o", where)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("portctl: error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]  # after the notes on the ports
    line = errors[0]
    assert line.startswith(
        f"portctl: error: --output: {where!r} is not valid; expected a writable file path in an existing folder"
    )
    assert not (tmp_path / "missing").exists()
    assert list((tmp_path / "folder").iterdir()) == []
