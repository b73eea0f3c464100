"""``SnapshotStream``: the dashboard's Server-Sent Events endpoint.

Each client gets the current snapshot at once, then every new one as the collector takes
it (``event: snapshot``, ``id: <version>``, the JSON on one ``data:`` line), and a
comment line every ``heartbeat`` seconds while nothing changes, so proxies and the
browser keep the connection open. A slow client only ever gets the newest snapshot: the
ones it missed are skipped, not queued. The stream ends when the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from starlette.types import Receive, Scope, Send

from shipyard.core import Clock, TimerHandle, cancel_and_wait, validation
from shipyard.dashboard.collector import Collector
from shipyard.dashboard.snapshot import Snapshot

HEARTBEAT = b": heartbeat\n\n"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    # nginx and friends buffer responses unless told otherwise; an event must not wait.
    (b"x-accel-buffering", b"no"),
]


def encode_event(snapshot: Snapshot) -> bytes:
    """One SSE event carrying ``snapshot``."""
    data = msgspec.json.encode(snapshot)
    return b"event: snapshot\nid: %d\ndata: %s\n\n" % (snapshot.version, data)


class SnapshotStream:
    """A raw ASGI app streaming ``collector``'s snapshots (see the module docs)."""

    __slots__ = ("clock", "collector", "heartbeat")

    def __init__(self, collector: Collector, *, heartbeat: float, clock: Clock) -> None:
        self.collector = collector
        self.heartbeat = validation.positive("heartbeat", heartbeat)
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        wake = asyncio.Event()
        latest: list[Snapshot] = []
        beat = [False]
        closed = [False]

        def on_snapshot(snapshot: Snapshot) -> None:
            latest[:] = [snapshot]
            wake.set()

        def on_heartbeat() -> None:
            beat[0] = True
            wake.set()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            closed[0] = True
            wake.set()

        unsubscribe = self.collector.events.subscribe(on_snapshot)
        watcher = asyncio.ensure_future(watch_disconnect())
        timer: TimerHandle = self.clock.call_later(self.heartbeat, on_heartbeat)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send(
                {
                    "type": "http.response.body",
                    "body": encode_event(self.collector.snapshot),
                    "more_body": True,
                }
            )
            while True:
                await wake.wait()
                wake.clear()
                if closed[0]:
                    break
                chunk = b""
                if latest:
                    chunk = encode_event(latest.pop())
                elif beat[0]:
                    chunk = HEARTBEAT
                if beat[0]:
                    beat[0] = False
                    timer = self.clock.call_later(self.heartbeat, on_heartbeat)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            # The client went away mid-write: nothing to tell it.
            pass
        finally:
            unsubscribe()
            timer.cancel()
            await cancel_and_wait(watcher)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
