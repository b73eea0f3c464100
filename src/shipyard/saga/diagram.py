"""A saga definition as a Mermaid flowchart: steps, the pivot, and the compensation path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipyard.saga.definition import SagaDefinition, StepShape


def saga_diagram(definition: SagaDefinition[Any]) -> str:
    """Mermaid ``flowchart`` text for ``definition`` (paste into any Mermaid renderer)."""
    return mermaid(definition.name, definition.shape(), version=definition.version)


def mermaid(name: str, steps: Sequence[StepShape], *, version: int | None = None) -> str:
    """Mermaid text for a saga's step shapes (as recorded in the saga log).

    Solid arrows are the forward path; dotted arrows are failures leading into the
    compensations, which run newest first. The pivot is a hexagon, read-only steps are
    parallelograms, steps after the pivot loop on themselves (retried until they succeed).
    """
    title = name if version is None else f"{name} v{version}"
    lines = ["flowchart TD", f"    %% saga {title}", f"    start([{_label(title)}])"]
    previous = "start"
    for i, step in enumerate(steps):
        label = _label(step.name)
        if step.pivot:
            node = f"s{i}{{{{{label}}}}}"
        elif step.read_only:
            node = f"s{i}[/{label}/]"
        else:
            node = f"s{i}[{label}]"
        arrow = " --> " if previous == "start" else " -->|ok| "
        lines.append(f"    {previous}{arrow}{node}")
        previous = f"s{i}"
    lines.append(f"    {previous} -->|ok| done([COMPLETED])")
    compensable = [i for i, s in enumerate(steps) if s.compensable]
    for i in compensable:
        lines.append(f"    c{i}[undo {_label(steps[i].name)}]")
    for i, step in enumerate(steps):
        if step.retriable:
            lines.append(f"    s{i} -.->|fails: retry| s{i}")
            continue
        lines.append(f"    s{i} -.->|fails| {_undo_before(i, compensable)}")
    for i in compensable:
        lines.append(f"    c{i} --> {_undo_before(i, compensable)}")
        lines.append(f"    c{i} -.->|fails: retry| c{i}")
    if any(not s.retriable for s in steps):
        lines.append("    compensated([COMPENSATED])")
    return "\n".join(lines) + "\n"


def _undo_before(index: int, compensable: list[int]) -> str:
    earlier = [i for i in compensable if i < index]
    return f"c{earlier[-1]}" if earlier else "compensated"


def _label(text: str) -> str:
    # Quotes and brackets would end a Mermaid label early.
    return "".join(c if c.isalnum() or c in " _-.:" else "_" for c in text)
