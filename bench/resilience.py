"""Per-call overhead of Shipyard's resilience policies against the Python peers, one run.

Every case wraps the same trivial function; nothing fails, so this is the price each call
pays on the happy path. Peers: pybreaker, aiobreaker, purgatory, circuitbreaker (breakers),
tenacity and stamina (retry); the pipeline is compared with the same four concerns stacked
from peers (tenacity + circuitbreaker + asyncio.timeout + asyncio.Semaphore).
Targets (issue 2): closed breaker <= 0.5 us added and >= 4x better than the fastest peer;
no-failure retry <= 1 us; 4-stage pipeline <= 2.5 us.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from bench.timing import print_overhead_table, time_async_cases, time_sync_cases

warnings.filterwarnings("ignore")

LOOPS = int(os.environ.get("BENCH_LOOPS", "20000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "15"))


async def target() -> int:
    return 1


def sync_target() -> int:
    return 1


def _loop_async(fn: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[None]]:
    async def case(n: int) -> None:
        for _ in range(n):
            await fn()

    return case


def _loop_sync(fn: Callable[[], Any]) -> Callable[[int], None]:
    def case(n: int) -> None:
        for _ in range(n):
            fn()

    return case


def ours() -> dict[str, Any]:
    from shipyard.resilience import Bulkhead, CircuitBreaker, Pipeline, Retry, Timeout

    return {
        "breaker": CircuitBreaker("bench"),
        "retry": Retry(max_attempts=3),
        "bulkhead": Bulkhead("bench", 64),
        "timeout": Timeout(5.0),
        "pipeline": Pipeline(
            Timeout(5.0), Retry(max_attempts=3), CircuitBreaker("bench-p"), Bulkhead("bench-p", 64)
        ),
        "pipeline_sync": Pipeline(
            Retry(max_attempts=3), CircuitBreaker("bench-ps"), Bulkhead("bench-ps", 64)
        ),
    }


def async_breakers() -> tuple[dict[str, Any], dict[str, set[str]]]:
    import aiobreaker
    import circuitbreaker
    import purgatory

    our = ours()
    purgatory_factory = purgatory.AsyncCircuitBreakerFactory()
    cases = {
        "bare await f()": _loop_async(target),
        "shipyard CircuitBreaker": _loop_async(our["breaker"](target)),
        "circuitbreaker @circuit": _loop_async(circuitbreaker.circuit(target)),
        "aiobreaker CircuitBreaker": _loop_async(aiobreaker.CircuitBreaker()(target)),
        "purgatory AsyncCircuitBreakerFactory": _loop_async(purgatory_factory("bench")(target)),
    }
    peers = {"circuitbreaker @circuit", "aiobreaker CircuitBreaker"}
    peers.add("purgatory AsyncCircuitBreakerFactory")
    return cases, {"shipyard CircuitBreaker": peers}


def async_retries() -> tuple[dict[str, Any], dict[str, set[str]]]:
    import stamina
    import tenacity

    our = ours()
    tenacity_retry = tenacity.retry(stop=tenacity.stop_after_attempt(3))
    cases = {
        "bare await f()": _loop_async(target),
        "shipyard Retry": _loop_async(our["retry"](target)),
        "tenacity @retry": _loop_async(tenacity_retry(target)),
        "stamina @retry": _loop_async(stamina.retry(on=Exception, attempts=3)(target)),
    }
    return cases, {"shipyard Retry": {"tenacity @retry", "stamina @retry"}}


def async_isolation() -> tuple[dict[str, Any], dict[str, set[str]]]:
    import circuitbreaker
    import tenacity

    our = ours()
    semaphore = asyncio.Semaphore(64)

    async def semaphore_call() -> int:
        async with semaphore:
            return await target()

    async def timeout_call() -> int:
        async with asyncio.timeout(5.0):
            return await target()

    peer_semaphore = asyncio.Semaphore(64)
    peer_breaker = circuitbreaker.circuit(name="bench-stack")

    @tenacity.retry(stop=tenacity.stop_after_attempt(3))
    async def peer_stack() -> int:
        async with asyncio.timeout(5.0):
            return await _peer_guarded()

    @peer_breaker
    async def _peer_guarded() -> int:
        async with peer_semaphore:
            return await target()

    cases = {
        "bare await f()": _loop_async(target),
        "shipyard Bulkhead": _loop_async(our["bulkhead"](target)),
        "asyncio.Semaphore (hand-rolled)": _loop_async(semaphore_call),
        "shipyard Timeout": _loop_async(our["timeout"](target)),
        "asyncio.timeout (hand-rolled)": _loop_async(timeout_call),
        "shipyard Pipeline(timeout,retry,breaker,bulkhead)": _loop_async(our["pipeline"](target)),
        "peer stack (tenacity+circuitbreaker+timeout+sem)": _loop_async(peer_stack),
    }
    return cases, {
        "shipyard Bulkhead": {"asyncio.Semaphore (hand-rolled)"},
        "shipyard Timeout": {"asyncio.timeout (hand-rolled)"},
        "shipyard Pipeline(timeout,retry,breaker,bulkhead)": {
            "peer stack (tenacity+circuitbreaker+timeout+sem)"
        },
    }


def sync_all() -> tuple[dict[str, Any], dict[str, set[str]]]:
    import circuitbreaker
    import pybreaker
    import stamina
    import tenacity

    our = ours()
    lock = threading.BoundedSemaphore(64)

    def semaphore_call() -> int:
        with lock:
            return sync_target()

    cases = {
        "bare f()": _loop_sync(sync_target),
        "shipyard CircuitBreaker": _loop_sync(our["breaker"](sync_target)),
        "pybreaker CircuitBreaker": _loop_sync(pybreaker.CircuitBreaker()(sync_target)),
        "circuitbreaker @circuit": _loop_sync(circuitbreaker.circuit(sync_target)),
        "shipyard Retry": _loop_sync(our["retry"](sync_target)),
        "tenacity @retry": _loop_sync(
            tenacity.retry(stop=tenacity.stop_after_attempt(3))(sync_target)
        ),
        "stamina @retry": _loop_sync(stamina.retry(on=Exception, attempts=3)(sync_target)),
        "shipyard Bulkhead": _loop_sync(our["bulkhead"](sync_target)),
        "threading.BoundedSemaphore (hand-rolled)": _loop_sync(semaphore_call),
        "shipyard Pipeline(retry,breaker,bulkhead)": _loop_sync(our["pipeline_sync"](sync_target)),
    }
    breakers = {"pybreaker CircuitBreaker", "circuitbreaker @circuit"}
    return cases, {
        "shipyard CircuitBreaker": breakers,
        "shipyard Retry": {"tenacity @retry", "stamina @retry"},
        "shipyard Bulkhead": {"threading.BoundedSemaphore (hand-rolled)"},
        "shipyard Pipeline(retry,breaker,bulkhead)": set(),
    }


def main() -> None:
    """Run every table; ``BENCH_LOOPS`` / ``BENCH_REPEATS`` scale the run."""
    print(f"python {sys.version.split()[0]}, loops={LOOPS}, repeats={REPEATS}; median ns/call")
    for title, build, bare in (
        ("async circuit breakers (closed)", async_breakers, "bare await f()"),
        ("async retry (no failure)", async_retries, "bare await f()"),
        ("async bulkhead, timeout, pipeline", async_isolation, "bare await f()"),
    ):
        cases, compare = build()
        results = time_async_cases(cases, loops=LOOPS, repeats=REPEATS)
        print_overhead_table(title, results, bare=bare, compare=compare)
    cases, compare = sync_all()
    results = time_sync_cases(cases, loops=LOOPS, repeats=REPEATS)
    print_overhead_table(
        "sync (pybreaker has no async support: its decorator does not await coroutines)",
        results,
        bare="bare f()",
        compare=compare,
    )


if __name__ == "__main__":
    main()
