"""The bulkheads of a shop service's databases: which pools, and how big.

Request handlers use ``api`` (the first pool, so the default); the outbox relay, the
projection runner and the saga orchestrator use ``background``; the orders dashboard's
reports use ``analytics``. A burst of background work or a slow report then waits in its
own pool instead of taking the connections user requests need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PoolSizes = dict[str, dict[str, float]]
"""``open_database(url, pools=...)`` configuration."""

# On PostgreSQL every pool slot is a server connection, and the distributed profile opens
# 10 service databases (one per process but the gateway; inventory runs twice) and 4
# inbox databases on one server (max_connections 100 by default): these sizes keep the
# whole shop at 73 pool connections at peak (29 when idle: asyncpg keeps one open per
# pool), plus one readiness-check connection per process: 83 in all.
# On SQLite a pool bounds concurrent transactions (reader connections are opened on
# demand, writes share the one writer), so the literature's split applies: api 20 / 5 s,
# analytics 5 / 30 s, background 10 / 60 s.
_POSTGRES_SIZES = {"api": 4, "background": 2, "analytics": 1}
_INBOX_POSTGRES_SIZES = {"background": 2, "api": 1}


def service_pools(url: str, *, analytics: bool = False) -> PoolSizes:
    """The pools of a service's own database at ``url``: ``api`` first (the default, for
    request handlers), ``background`` (relay, projections, sagas), and ``analytics``
    (reports) when the service serves any."""
    names = ("api", "background", "analytics") if analytics else ("api", "background")
    return _sized(names, _POSTGRES_SIZES if _on_postgres(url) else None)


def inbox_pools(url: str) -> PoolSizes:
    """The pools of a consumer's inbox database at ``url``: ``background`` first (the bus,
    its handlers and relay), ``api`` for requests reading what handlers stored."""
    return _sized(("background", "api"), _INBOX_POSTGRES_SIZES if _on_postgres(url) else None)


def _sized(names: Sequence[str], sizes: Mapping[str, int] | None) -> PoolSizes:
    # Keys left out come from the storage defaults for these names (api 20 / 5 s, ...).
    return {name: {} if sizes is None else {"size": sizes[name]} for name in names}


def _on_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgres:"))
