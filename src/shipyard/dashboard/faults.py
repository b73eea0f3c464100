"""Injecting faults into a service from the dashboard: what a chaos request may say, and
forwarding it to the ``/admin/chaos`` endpoint of every instance of the service.

The dashboard holds no fault state of its own: each instance's ``ChaosAdminApp`` is the
truth, and the collector reads it back on the next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from shipyard.chaos import Fault
from shipyard.core import ConfigError

CHAOS_PATH = "/admin/chaos"
"""Where a ``shipyard.service.Service`` serves its chaos admin endpoint."""


def faults_from_request(body: object) -> list[Fault]:
    """The faults a ``POST /api/chaos/{service}`` body asks for; ``[]`` clears them.

    ``{"latency": 0.2, "error_rate": 0.5}`` (any :class:`~shipyard.chaos.Fault` field,
    ``path_prefix`` defaulting to ``/``), ``{"faults": [...]}`` for several rules, or
    ``{"clear": true}``. Raises ``ConfigError`` naming the bad field.
    """
    if not isinstance(body, Mapping):
        raise ConfigError("body", body, 'must be a JSON object, e.g. {"error_rate": 0.5}')
    if body.get("clear") is True:
        if len(body) != 1:
            raise ConfigError("clear", dict(body), "must come alone: {clear: true}")
        return []
    if "faults" in body:
        items = body["faults"]
        if len(body) != 1 or not isinstance(items, list):
            raise ConfigError("faults", items, "must be a list of fault objects, alone")
        return [Fault.from_dict(item) for item in items]
    fault = Fault.from_dict(body)
    if not fault.active:
        raise ConfigError(
            "body", dict(body), "injects nothing: set latency, error_rate or refuse (or clear)"
        )
    return [fault]


@dataclass(frozen=True, slots=True)
class Target:
    """One instance to send faults to."""

    id: str
    url: str


async def send_faults(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    faults: Sequence[Fault],
    *,
    token: str,
    request_timeout: float,
) -> dict[str, dict[str, Any]]:
    """PUT ``faults`` (DELETE when empty) to every target's chaos endpoint at once.

    Returns ``{instance id: {"status": 200, ...} or {"error": "..."}}``; a failure on one
    instance does not stop the others.
    """
    body = {"faults": [fault.to_dict() for fault in faults]}
    headers = {"Authorization": f"Bearer {token}"}

    async def one(target: Target) -> tuple[str, dict[str, Any]]:
        url = target.url + CHAOS_PATH
        try:
            async with session.request(
                "PUT" if faults else "DELETE",
                url,
                json=body if faults else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=request_timeout),
            ) as response:
                answer = await response.json(content_type=None)
                if response.status != 200:
                    detail = answer.get("error") if isinstance(answer, dict) else answer
                    return target.id, {"status": response.status, "error": str(detail)}
                return target.id, {"status": 200, "faults": answer.get("faults", [])}
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            return target.id, {"error": f"{url}: {exc or type(exc).__name__}"}

    results = await asyncio.gather(*(one(target) for target in targets))
    return dict(results)
