"""Error messages never echo a huge value: InvalidInput clips what it shows."""

from __future__ import annotations

from portctl.errors import InvalidInput


def test_a_long_value_is_clipped_to_its_start_and_its_length() -> None:
    message = str(InvalidInput("--note", "x" * 100_000, "a short note"))
    assert message == f"--note: {'x' * 200!r}…(100000 characters) is not valid; expected a short note"


def test_a_short_value_is_shown_whole() -> None:
    assert str(InvalidInput("port", "80x", "digits")) == "port: '80x' is not valid; expected digits"


def test_a_long_non_string_value_is_clipped_too() -> None:
    message = str(InvalidInput("ports", list(range(10_000)), "a port"))
    assert message.startswith("ports: [0, 1, 2, ")
    assert "…(" in message
    assert len(message) < 300


def test_an_integer_too_long_to_convert_is_described_not_shown() -> None:
    message = str(InvalidInput("port", 10**5000, "a port"))
    assert message == "port: an integer of thousands of digits is not valid; expected a port"


def test_a_file_path_of_ordinary_length_is_shown_whole() -> None:
    path = "/tmp/pytest-of-root/pytest-180/test_store_in_a_missing_folder0/no-such-folder/store.json"
    assert repr(path) in str(InvalidInput("store", path, "a path"))
