"""The query API: list sagas by state, show one saga's timeline, as data or over HTTP.

``saga_view`` / ``timeline_view`` turn records into plain JSON-ready dicts (the CLI and
the dashboard print the same); :func:`saga_api` serves them as a small Starlette app:
``GET /sagas?state=COMPENSATING&name=order&limit=50`` and ``GET /sagas/{id}`` (404 with
a JSON error for an unknown id).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from shipyard.saga.errors import SagaNotFound
from shipyard.saga.record import SagaRecord, SagaState, StepFailure, Transition
from shipyard.saga.store import SagaLog

if TYPE_CHECKING:
    from starlette.applications import Starlette


def saga_view(record: SagaRecord) -> dict[str, Any]:
    """One saga's row as a dict (data decoded from JSON when it is JSON)."""
    try:
        data: Any = msgspec.json.decode(record.data)
    except msgspec.DecodeError:
        data = record.data.decode("utf-8", "replace")
    return {
        "saga_id": record.saga_id,
        "name": record.name,
        "version": record.version,
        "state": record.state.value,
        "position": record.position,
        "attempt": record.attempt,
        "awaiting_reply": record.awaiting,
        "failed_step": record.failed_step,
        "error": record.error,
        "failure": _failure_view(record),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "data": data,
    }


def _failure_view(record: SagaRecord) -> dict[str, str] | None:
    # Only a step that failed for good (the one the saga compensates for) is a failure.
    if record.failed_step is None or record.error is None:
        return None
    failure = StepFailure.parse(record.failed_step, record.error)
    return {"step": failure.step, "error_type": failure.error_type, "message": failure.message}


def timeline_view(timeline: list[Transition]) -> list[dict[str, Any]]:
    """A timeline as a list of dicts, oldest first."""
    return [
        {
            "seq": t.seq,
            "kind": t.kind.value,
            "step": t.step,
            "attempt": t.attempt,
            "error": t.error,
            "at": t.at,
        }
        for t in timeline
    ]


async def show_saga(log: SagaLog, saga_id: str) -> dict[str, Any]:
    """The saga and its timeline; raises :class:`SagaNotFound` for an unknown id."""
    record = await log.get(saga_id)
    return {**saga_view(record), "timeline": timeline_view(await log.timeline(saga_id))}


def saga_api(log: SagaLog) -> Starlette:
    """An ASGI app serving the saga query API over ``log``."""
    # Imported here: a saga worker process that serves no HTTP skips loading Starlette.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def listing(request: Request) -> JSONResponse:
        state = request.query_params.get("state")
        if state is not None and state.upper() not in SagaState.__members__:
            allowed = ", ".join(SagaState.__members__)
            return JSONResponse({"error": f"unknown state {state!r}; one of {allowed}"}, 400)
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, 400)
        records = await log.list(
            state=None if state is None else SagaState(state.upper()),
            name=request.query_params.get("name"),
            limit=max(1, min(limit, 1000)),
        )
        return JSONResponse({"sagas": [saga_view(r) for r in records]})

    async def detail(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await show_saga(log, request.path_params["saga_id"]))
        except SagaNotFound as error:
            return JSONResponse({"error": str(error)}, 404)

    return Starlette(
        routes=[Route("/sagas", listing), Route("/sagas/{saga_id}", detail)],
    )
