"""Running a request's coroutine without an ``asyncio.Task``.

A Task per request costs more than the rest of a proxied request's bookkeeping together:
creating it (and registering it in asyncio's weak set of all tasks), a loop iteration
before its first step, and a scheduled wake-up per future it awaits. The common request
needs no coroutine at all (see ``server`` and ``filters.Chain.answer``); one that does
(a JWT cache miss, a new upstream connection, retries, streaming) has its connection's
answering coroutine driven here instead: the first step runs at once (straight from the
callback that found it must wait), and each later step runs from the done callback of
the future the coroutine is waiting on.

What that gives up is a *current task*: ``asyncio.current_task()`` is ``None`` inside, so
``asyncio.timeout()`` and libraries built on it (redis-py, aiohttp's timeouts) must not be
awaited here. Code that may do so runs in a Task of its own, awaited from here (a Task is
a future like any other): a chain only runs inline when every filter and its router say
``runs_inline`` (see ``filters.Chain``). Each run gets its own copy of the context, as a
Task would, so context variables set while answering one connection do not leak into
another.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

from shipyard.core.logging import get_logger

_log = get_logger("shipyard.gateway")


class InlineRun:
    """Drives one coroutine to completion from future callbacks (no Task, no result).

    Creating one starts it: the first step runs before the constructor returns."""

    __slots__ = ("_context", "_coro", "_loop")

    def __init__(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
        self._coro = coro
        self._loop = loop
        self._context = contextvars.copy_context()
        self._context.run(self._step, None)

    def _step(self, _done: object) -> None:
        try:
            waiting = self._coro.send(None)
        except StopIteration:
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            _log.exception("gateway connection handler failed")
            return
        if waiting is None:
            # A bare ``yield`` (``asyncio.sleep(0)``): give the loop one turn.
            self._loop.call_soon(self._step, None, context=self._context)
            return
        if getattr(waiting, "_asyncio_future_blocking", None) is None:
            self._coro.close()
            _log.error("gateway connection handler awaited a non-future", got=repr(waiting))
            return
        # A future (``await fut`` yields it): resume when it is done. A done callback is
        # always scheduled through the loop, so steps never nest.
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(self._step, context=self._context)
