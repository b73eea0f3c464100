"""``auth: any`` — accept whichever credential the request brings: a JWT or an API key."""

from __future__ import annotations

from shipyard.gateway.api_key import ApiKeyAuth
from shipyard.gateway.auth_jwt import JwtAuth
from shipyard.gateway.filters import Exchange, Filter, Reply, local_reply


class AnyAuth(Filter):
    """A bearer token is checked as a JWT, otherwise an API key is required."""

    def __init__(self, jwt: JwtAuth | None, api_key: ApiKeyAuth | None) -> None:
        self._jwt = jwt
        self._api_key = api_key
        self.runs_inline = (jwt is None or jwt.runs_inline) and (
            api_key is None or api_key.runs_inline
        )
        self.strips = (jwt.strips if jwt else frozenset()) | (
            api_key.strips if api_key else frozenset()
        )

    async def on_request(self, exchange: Exchange) -> Reply | None:
        """Delegate to the filter whose credential is present."""
        if self._jwt is not None and (
            self._api_key is None or self._jwt.bearer(exchange) is not None
        ):
            return await self._jwt.on_request(exchange)
        if self._api_key is not None:
            return await self._api_key.on_request(exchange)
        return local_reply(401, "credentials are required")
