"""Blue-green input follows the rules of every other command: an empty --address is refused (as
``register --address ''`` is), and durations take no padding."""

from __future__ import annotations

import pytest

from tests.cli.conftest import error_line


def test_an_empty_address_is_refused_not_taken_for_the_default(run, store_path) -> None:
    result = run(
        "bluegreen", "deploy", "api", "--color", "blue", "--port", "7321", "--check", "none", "--address", ""
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert error_line(result).startswith("portctl: error: --address: '' is not valid; expected a host name")
    assert "no registered services" in run("services").stdout


@pytest.mark.parametrize("flag", ["--min-healthy", "--drain"])
@pytest.mark.parametrize("value", [" 30s", "30s ", " 0", "0 ", "\t0s", "0s\n"])
def test_a_padded_window_is_refused(run, store_path, flag: str, value: str) -> None:
    for color, port in (("blue", "7322"), ("green", "7323")):
        assert (
            run("bluegreen", "deploy", "api", "--color", color, "--port", port, "--check", "none").returncode
            == 0
        )
    before = store_path.read_bytes()
    result = run("bluegreen", "cutover", "api", "--to", "green", flag, value, "--yes")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert error_line(result).startswith(
        f"portctl: error: {flag}: {value!r} is not valid; expected a duration"
    )
    assert store_path.read_bytes() == before
