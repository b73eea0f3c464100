"""Keys are validated as the draft says; scope keys and fingerprints separate what differs."""

from __future__ import annotations

import pytest

from shipyard.core import ShipyardError
from shipyard.idempotency import (
    InvalidIdempotencyKeyError,
    parse_key,
    request_fingerprint,
    scope_key,
)


def test_bare_and_quoted_keys_parse_to_the_same_key() -> None:
    assert parse_key(b"8e03978e-40d5") == parse_key(b'"8e03978e-40d5"') == "8e03978e-40d5"


def test_a_key_of_255_printable_characters_is_accepted() -> None:
    assert parse_key(b"~" * 255) == "~" * 255


@pytest.mark.parametrize("raw", [b"", b'""', b"k" * 256, b"tab\there", b"caf\xc3\xa9"])
def test_invalid_keys_raise_a_value_error_saying_what_to_send(raw: bytes) -> None:
    with pytest.raises(InvalidIdempotencyKeyError, match="Idempotency-Key") as error:
        parse_key(raw)
    assert isinstance(error.value, ValueError)
    assert isinstance(error.value, ShipyardError)


def test_the_scope_key_differs_per_principal_method_path_and_key() -> None:
    base = ("alice", "POST", "/orders", "k")
    variants = [
        ("bob", "POST", "/orders", "k"),
        ("alice", "PATCH", "/orders", "k"),
        ("alice", "POST", "/orders/1", "k"),
        ("alice", "POST", "/orders", "k2"),
    ]
    assert len({scope_key(*base), *(scope_key(*v) for v in variants)}) == 5


def test_shifting_bytes_between_parts_changes_the_fingerprint() -> None:
    assert request_fingerprint("POST", "/a", b"", b"bc") != request_fingerprint(
        "POST", "/ab", b"", b"c"
    )


def test_selected_headers_change_the_fingerprint() -> None:
    plain = request_fingerprint("POST", "/orders", b"", b"{}")
    euro = request_fingerprint("POST", "/orders", b"", b"{}", [(b"x-currency", b"EUR")])
    assert plain != euro
    assert euro == request_fingerprint("POST", "/orders", b"", b"{}", [(b"x-currency", b"EUR")])
