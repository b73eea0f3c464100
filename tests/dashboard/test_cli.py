"""``shipyard dashboard``: refuses a bad setting in one line instead of serving."""

from __future__ import annotations

import pytest

from shipyard.cli import main


def test_a_registry_url_it_cannot_use_is_reported_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["dashboard", "--registry", "redis://127.0.0.1:6379"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("shipyard dashboard: invalid registry_url=")
    assert out.count("\n") == 1


def test_a_short_chaos_token_in_the_environment_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPYARD_CHAOS_TOKEN", "short")
    assert main(["dashboard"]) == 2
    assert "chaos_token" in capsys.readouterr().out
