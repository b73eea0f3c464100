"""``ChaosAdminApp``: read and switch the faults at run time over HTTP.

``GET`` returns ``{"faults": [...]}``; ``PUT`` with the same shape replaces them (``[]``
switches chaos off); ``DELETE`` clears them. Every request needs the token, as
``Authorization: Bearer <token>`` or ``X-Chaos-Token: <token>``, compared in constant
time; without a configured token the endpoint does not exist (404), so a service never
exposes fault injection by accident.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import Receive, Scope, Send

from shipyard.chaos.faults import Chaos, Fault
from shipyard.core import ConfigError, get_logger

_log = get_logger("shipyard.chaos")

MAX_BODY = 64 * 1024
"""Largest accepted PUT body (bytes); larger answers 413."""

_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class ChaosAdminApp:
    """The admin endpoint for ``chaos``, guarded by ``token`` (``None``: disabled)."""

    __slots__ = ("_token", "chaos")

    def __init__(self, chaos: Chaos, token: str | None) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ConfigError("chaos_token", "<hidden>", "must be a string of >= 8 characters")
        self.chaos = chaos
        self._token = None if token is None else token.encode()

    @property
    def enabled(self) -> bool:
        """True when a token is configured."""
        return self._token is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._token is None:
            await _reply(send, 404, {"error": "chaos admin is disabled (no token configured)"})
            return
        if not self._authorized(scope):
            await _reply(
                send,
                401,
                {"error": "missing or wrong chaos token: send Authorization: Bearer <token>"},
                [(b"www-authenticate", b'Bearer realm="shipyard-chaos"')],
            )
            return
        method = scope["method"]
        if method == "GET":
            await _reply(send, 200, self._state())
        elif method == "PUT":
            await self._put(receive, send)
        elif method == "DELETE":
            self.chaos.clear()
            _log.warning("chaos faults cleared")
            await _reply(send, 200, self._state())
        else:
            await _reply(
                send,
                405,
                {"error": "method not allowed: use GET, PUT or DELETE"},
                [(b"allow", b"GET, PUT, DELETE")],
            )

    def _authorized(self, scope: Scope) -> bool:
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif name == b"x-chaos-token":
                presented = value.strip()
        assert self._token is not None
        # Constant time: the comparison must not reveal how much of a guess was right.
        return hmac.compare_digest(presented, self._token)

    def _state(self) -> dict[str, Any]:
        return {"faults": [fault.to_dict() for fault in self.chaos.faults]}

    async def _put(self, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _reply(send, 413, {"error": f"body larger than {MAX_BODY} bytes"})
                return
            if not message.get("more_body", False):
                break
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("faults"), list):
                raise ConfigError("faults", data, 'must be {"faults": [ {...}, ... ]}')
            faults = [Fault.from_dict(item) for item in data["faults"]]
            self.chaos.set(faults)
        except (ValueError, TypeError) as exc:
            # ConfigError is a ValueError, and so is malformed JSON.
            await _reply(send, 400, {"error": str(exc)})
            return
        _log.warning("chaos faults set", faults=[fault.to_dict() for fault in faults])
        await _reply(send, 200, self._state())


async def _reply(
    send: Send, status: int, payload: object, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *(extra or ())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
