"""``SubprocessControl``: the process control the dashboard's own tests kill through."""

from __future__ import annotations

import sys

import pytest

from shipyard.core import ConfigError
from shipyard.dashboard import ProcessSpec, SubprocessControl, UnknownInstanceError

SLEEPER = [sys.executable, "-c", "import signal; signal.pause()"]  # runs until killed


async def test_restarting_a_running_process_replaces_it_and_close_stops_all() -> None:
    control = SubprocessControl(
        {"a": ProcessSpec("worker", SLEEPER), "b": ProcessSpec("worker", SLEEPER)}
    )
    await control.start()
    try:
        before = {p.id: p.pid for p in await control.instances()}
        await control.restart("a")
        after = {p.id: p.pid for p in await control.instances()}
    finally:
        await control.aclose()
    assert after["a"] not in (None, before["a"])
    assert after["b"] == before["b"]
    assert [p.running for p in await control.instances()] == [False, False]


async def test_an_unknown_instance_is_named_with_the_known_ones() -> None:
    control = SubprocessControl({"worker-1": ProcessSpec("worker", SLEEPER)})
    with pytest.raises(UnknownInstanceError) as caught:
        await control.kill("worker-9")
    assert isinstance(caught.value, KeyError)
    assert "'worker-9'" in str(caught.value)
    assert "worker-1" in str(caught.value)


def test_a_spec_without_a_command_is_refused() -> None:
    with pytest.raises(ConfigError, match="argv"):
        ProcessSpec("worker", [])
    with pytest.raises(ConfigError, match="specs"):
        SubprocessControl({})
