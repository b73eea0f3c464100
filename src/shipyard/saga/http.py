"""HTTP steps: call a participant through :class:`~shipyard.client.ServiceClient`.

The step's idempotency key (saga id + step) travels as the ``Idempotency-Key`` header, so
a participant behind the idempotency middleware applies a re-sent call once — and
``ServiceClient`` may retry the POST safely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec

from shipyard.saga.definition import Action, StepContext

D = TypeVar("D", bound=msgspec.Struct)


class JsonPoster(Protocol):
    """What an HTTP step needs of a client: ``ServiceClient.post_json`` fits."""

    async def post_json(self, path: str, json: Any, *, headers: Any = None) -> Any:
        """POST ``json`` to ``path`` and return the decoded answer."""


def http_action(
    client: JsonPoster,
    path: str | Callable[[StepContext[D]], str],
    *,
    body: Callable[[StepContext[D]], Any] | None = None,
    merge: Callable[[D, Any], D] | None = None,
) -> Action[D]:
    """An action (or compensation) that POSTs to a participant.

    ``path`` may depend on the context; ``body(ctx)`` builds the JSON (default: the saga
    data); ``merge(data, answer)`` folds the answer into the saga data. A non-2xx answer
    raises (the client's HTTP errors), which fails the attempt.
    """

    async def call(ctx: StepContext[D]) -> D | None:
        target = path(ctx) if callable(path) else path
        payload = body(ctx) if body is not None else msgspec.to_builtins(ctx.data)
        headers = {
            "Idempotency-Key": ctx.idempotency_key,
            "X-Saga-Id": ctx.saga_id,
            "X-Saga-Step": ctx.step,
        }
        answer = await client.post_json(target, payload, headers=headers)
        return merge(ctx.data, answer) if merge is not None else None

    return call
