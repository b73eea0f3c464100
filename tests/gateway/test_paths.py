"""Path normalisation: what the gateway matches is what it forwards, with no way around."""

from __future__ import annotations

import pytest

from shipyard.gateway.paths import BadPath, normalise_path, split_target


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"/users/42", b"/users/42"),
        (b"/admin/../public", b"/public"),
        (b"/public/%2e%2e/admin", b"/admin"),
        (b"/public/%2E%2E/admin", b"/admin"),
        (b"//admin", b"/admin"),
        (b"/public//..//admin", b"/admin"),
        (b"/\\admin", b"/admin"),
        (b"/public/..%5cadmin", b"/admin"),
        (b"/./admin/.", b"/admin/"),
        (b"/%61dmin", b"/admin"),
        (b"/a%2fb", b"/a%2Fb"),
        (b"/caf%c3%a9", b"/caf%C3%A9"),
    ],
)
def test_paths_are_normalised_before_matching(raw: bytes, canonical: bytes) -> None:
    assert normalise_path(raw) == canonical


@pytest.mark.parametrize(
    "raw", [b"/../etc/passwd", b"/%2e%2e/admin", b"/a/%00", b"/a b", b"/x%zz", b"/a%0d%0aX: y"]
)
def test_paths_that_cannot_be_made_safe_are_refused(raw: bytes) -> None:
    with pytest.raises(BadPath):
        normalise_path(raw)


def test_absolute_form_targets_keep_only_path_and_query() -> None:
    assert split_target(b"http://169.254.169.254/latest?x=1") == (b"/latest", b"x=1")
    assert split_target(b"http://evil.example") == (b"/", b"")


def test_targets_that_are_not_paths_are_refused() -> None:
    with pytest.raises(BadPath):
        split_target(b"evil.example:443")
