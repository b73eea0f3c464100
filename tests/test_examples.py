"""The README's code lives in examples/; running it here keeps the README honest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_resilience_tour_shows_each_policy_working() -> None:
    seen = await load_example("resilience_tour").main()
    assert seen["breaker"] == ("open", 30)
    assert seen["retry"] == ("ok", 3)
    assert seen["client_error_attempts"] == 1
    assert seen["fallback"] == (["sku-2", "sku-3"], ["bestsellers"])
    assert seen["bulkheads"] == {"api": 20, "analytics": 5}
    assert seen["pipeline"] == "ok"
    assert seen["configured"] == ["Retry", "CircuitBreaker", "Bulkhead", "Timeout"]
