"""Saga definitions are checked when they are built, naming the offending step."""

from __future__ import annotations

import msgspec
import pytest

from shipyard.core import ConfigError
from shipyard.saga import SagaDefinition, SagaDefinitionError, Step, StepContext


class Data(msgspec.Struct):
    n: int = 0


async def act(ctx: StepContext[Data]) -> None:
    return None


def define(*steps: Step[Data]) -> SagaDefinition[Data]:
    return SagaDefinition("order", list(steps), data_type=Data)


def test_a_step_without_compensation_is_rejected_naming_it() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'reserve'.*no compensation") as info:
        define(Step("create", act, compensation=act), Step("reserve", act))
    assert info.value.step == "reserve"


def test_pivot_and_read_only_steps_need_no_compensation() -> None:
    saga = define(
        Step("check_customer", act, read_only=True),
        Step("create", act, compensation=act),
        Step("confirm", act, pivot=True),
        Step("notify", act),
    )
    assert [s.name for s in saga.order] == ["check_customer", "create", "confirm", "notify"]
    assert [s.retriable for s in saga.shape()] == [False, False, False, True]


def test_duplicate_step_names_are_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'create'.*duplicate"):
        define(Step("create", act, compensation=act), Step("create", act, compensation=act))


def test_a_cycle_through_after_is_rejected_naming_a_step_in_it() -> None:
    with pytest.raises(SagaDefinitionError, match=r"cycle: a -> b -> a"):
        define(
            Step("a", act, compensation=act, after=("b",)),
            Step("b", act, compensation=act, after=("a",)),
        )


def test_after_moves_a_step_behind_its_dependency() -> None:
    saga = define(
        Step("charge", act, compensation=act, after=("reserve",)),
        Step("reserve", act, compensation=act),
    )
    assert [s.name for s in saga.order] == ["reserve", "charge"]


def test_depending_on_an_unknown_step_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'charge'.*'reserv'"):
        define(Step("charge", act, compensation=act, after=("reserv",)))


def test_a_compensation_that_could_never_run_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'notify'.*after the pivot"):
        define(Step("confirm", act, pivot=True), Step("notify", act, compensation=act))
    with pytest.raises(SagaDefinitionError, match=r"step 'look'.*read-only"):
        define(Step("look", act, compensation=act, read_only=True))


def test_only_one_pivot_is_allowed() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'b'.*second pivot"):
        define(Step("a", act, pivot=True), Step("b", act, pivot=True))


def test_a_step_needs_exactly_one_way_to_act() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'x'.*exactly one"):
        define(Step("x", compensation=act))


def test_a_bad_timeout_names_the_step() -> None:
    with pytest.raises(ConfigError, match=r"steps\[x\].timeout"):
        define(Step("x", act, compensation=act, timeout=0))


def test_a_changed_definition_has_a_different_fingerprint() -> None:
    one = define(Step("a", act, compensation=act))
    same = define(Step("a", act, compensation=act))
    other = define(Step("a", act, compensation=act), Step("b", act, pivot=True))
    assert one.fingerprint == same.fingerprint != other.fingerprint
