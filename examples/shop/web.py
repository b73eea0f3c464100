"""The small HTTP vocabulary the shop's services share: JSON answers and request bodies."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response


class JSON(Response):
    """A JSON response encoded with msgspec."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def error(status: int, message: str, **details: Any) -> JSON:
    """An error answer: ``{"error": message, ...details}`` with ``status``."""
    return JSON({"error": message, **details}, status_code=status)


async def body(request: Request, shape: type[Any]) -> Any:
    """The request's JSON body as ``shape``; raises ``msgspec.ValidationError`` /
    ``DecodeError`` (both ``ValueError``) when it does not fit."""
    return msgspec.json.decode(await request.body(), type=shape)
