"""API-key authentication: a key in a header or query parameter names the consumer.

Keys are stored and compared as SHA-256 digests, so the configuration need not hold the
keys themselves and a lookup reveals nothing about how close a wrong key was. The key is
removed from the request before it goes upstream.
"""

from __future__ import annotations

import hashlib

from shipyard.gateway.config import ApiKeyConfig
from shipyard.gateway.filters import Exchange, Filter, Reply, local_reply


class ApiKeyAuth(Filter):
    """401 unless the request carries a known API key; sets ``exchange.consumer``."""

    runs_inline = True

    def __init__(self, config: ApiKeyConfig) -> None:
        self._by_digest = {digest: consumer for consumer, digest in config.keys}
        self._header = config.header.encode() if config.header else None
        self._query = config.query.encode() + b"=" if config.query else None
        self.strips = frozenset({self._header}) if self._header else frozenset()

    def present(self, ex: Exchange) -> bool:
        """True when the request carries a key where this filter looks for one."""
        if self._header is not None and self._header in ex.header_map:
            return True
        return self._query is not None and self._query in ex.query

    def _take_from_query(self, ex: Exchange) -> bytes | None:
        assert self._query is not None
        found = None
        kept = []
        for pair in ex.query.split(b"&"):
            if pair.startswith(self._query):
                found = pair[len(self._query) :]
            else:
                kept.append(pair)
        ex.query = b"&".join(kept)
        return found

    async def on_request(self, exchange: Exchange) -> Reply | None:
        """Look the key up by digest; forward the request without it."""
        key = exchange.header_map.get(self._header) if self._header is not None else None
        if self._query is not None and exchange.query:
            from_query = self._take_from_query(exchange)
            key = key if key is not None else from_query
        if not key:
            return local_reply(401, "an API key is required")
        consumer = self._by_digest.get(hashlib.sha256(key).digest())
        if consumer is None:
            return local_reply(401, "the API key is not valid")
        exchange.consumer = consumer
        return None
