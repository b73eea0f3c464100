"""Interleaved timing of many small cases, reported as the median ns per call.

Cases run in turn within each repeat, so drift on a shared machine (another process, CPU
frequency) hits every case alike instead of biasing whichever ran last.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

SyncCase = Callable[[int], None]
AsyncCase = Callable[[int], Awaitable[None]]


def time_sync_cases(cases: dict[str, SyncCase], *, loops: int, repeats: int) -> dict[str, float]:
    """Median ns per call of each case over ``repeats`` interleaved runs of ``loops`` calls."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():  # warm-up
        case(max(loops // 10, 1))
    for _ in range(repeats):
        for name, case in cases.items():
            start = time.perf_counter_ns()
            case(loops)
            samples[name].append((time.perf_counter_ns() - start) / loops)
    return {name: statistics.median(values) for name, values in samples.items()}


def time_async_cases(cases: dict[str, AsyncCase], *, loops: int, repeats: int) -> dict[str, float]:
    """The asyncio counterpart of :func:`time_sync_cases` (one event loop for all cases)."""

    async def run() -> dict[str, float]:
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for case in cases.values():
            await case(max(loops // 10, 1))
        for _ in range(repeats):
            for name, case in cases.items():
                start = time.perf_counter_ns()
                await case(loops)
                samples[name].append((time.perf_counter_ns() - start) / loops)
        return {name: statistics.median(values) for name, values in samples.items()}

    return asyncio.run(run())


def print_overhead_table(
    title: str, results: dict[str, float], *, bare: str, compare: dict[str, set[str]]
) -> None:
    """Print ns/call, ns added over the bare call, and ratios.

    ``compare`` maps each of our cases to the peer cases it competes with; the last column
    is the fastest of those peers' added ns divided by ours (above 1 means we are faster).
    """
    base = results[bare]
    added = {name: max(value - base, 0.0) for name, value in results.items()}
    peers = set().union(*compare.values()) if compare else set()
    print(f"\n{title}  (bare call = {base:.0f} ns)")
    print(f"{'':5}{'case':<52}{'ns/call':>9}{'added':>8}{'x bare':>8}{'vs peer':>9}")
    for name, value in results.items():
        tag = "ours" if name in compare else ("peer" if name in peers else "")
        ratio = value / base if base else float("nan")
        vs_peer = ""
        rivals = [added[p] for p in compare.get(name, ()) if p in added]
        if rivals:
            vs_peer = f"{min(rivals) / max(added[name], 1.0):.1f}x"
        print(f"{tag:<5}{name:<52}{value:>9.0f}{added[name]:>8.0f}{ratio:>8.2f}{vs_peer:>9}")
