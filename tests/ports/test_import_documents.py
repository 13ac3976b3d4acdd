"""parse_export refuses what is not a port_config.json with a message a person would write."""

from __future__ import annotations

import pytest

from portctl.errors import InvalidInput
from portctl.ports.documents import parse_export


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"services": {}}', 'a JSON object without an "allocations" list'),
        ("[1, 2]", "a JSON array"),
        ('"ports"', "a JSON string"),
        ("5432", "a JSON number"),
        ("true", "a JSON boolean"),
        ("null", "a JSON null"),
    ],
)
def test_a_document_of_another_kind_says_what_it_holds_and_what_to_give(text: str, kind: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_export(text, "ports.json")
    assert str(e.value) == (
        f"ports.json: holds {kind}, not a port_config.json; expected an object with an "
        '"allocations" list (portctl export writes one)'
    )
    assert "is not valid" not in str(e.value)


def test_an_integer_of_thousands_of_digits_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidInput) as e:
        parse_export('{"allocations": [], "schema": ' + "9" * 5000 + "}", "ports.json")
    assert str(e.value).startswith("ports.json: holds an integer of thousands of digits; expected")
    assert len(str(e.value)) < 200
