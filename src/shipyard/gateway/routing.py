"""Route matching, compiled once from the configuration.

Exact paths are a dict lookup; templates and regexes are compiled patterns tried in the
order they were written; prefixes are tried longest first. Only routes whose path
matches are checked for host, headers and method, so a path that exists with another
method answers 405 instead of 404.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Generic, TypeAlias, TypeVar

from shipyard.gateway.config import RouteConfig

T = TypeVar("T")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def compile_template(template: str) -> re.Pattern[bytes]:
    """``/users/{id}`` → a pattern whose named groups match one path segment each."""
    pattern = ""
    last = 0
    for match in _PARAM.finditer(template):
        pattern += re.escape(template[last : match.start()])
        pattern += f"(?P<{match.group(1)}>[^/]+)"
        last = match.end()
    pattern += re.escape(template[last:])
    return re.compile(("^" + pattern + "$").encode())


RouteMatch: TypeAlias = tuple[T, dict[str, str], bytes]
"""What ``Router.match`` finds: the route, its path parameters and the path to forward
upstream. A plain tuple: one is made per request, and it is the cheapest thing to make."""


class _Candidate(Generic[T]):
    __slots__ = (
        "config",
        "headers",
        "hosts",
        "methods",
        "open_ended",
        "payload",
        "plain",
        "prefix",
        "prefix_length",
        "regex",
        "rewrite",
    )

    def __init__(self, config: RouteConfig, payload: T) -> None:
        self.config = config
        self.payload = payload
        self.methods = frozenset(m.encode() for m in config.methods) if config.methods else None
        self.hosts = frozenset(h.encode() for h in config.hosts) if config.hosts else None
        self.headers = tuple(
            (name.encode(), None if value is None else value.encode())
            for name, value in config.headers
        )
        self.prefix = config.pattern.encode() if config.kind == "prefix" else b""
        self.prefix_length = len(self.prefix)
        self.open_ended = not self.prefix or self.prefix.endswith(b"/")
        """The prefix ends at a segment boundary itself (``/`` or ``/api/``), so any path
        starting with it matches; ``/api`` must not match ``/apix``."""
        self.regex: re.Pattern[bytes] | None = None
        if config.kind == "template":
            self.regex = compile_template(config.pattern)
        elif config.kind == "regex":
            self.regex = re.compile(config.pattern.encode())
        self.rewrite = config.rewrite
        # Any method, host and headers, path forwarded as it came: matching the path is all.
        self.plain = (
            self.methods is None
            and self.hosts is None
            and not self.headers
            and self.rewrite is None
            and not config.strip_prefix
        )

    def accepts(self, method: bytes, host: bytes, headers: dict[bytes, bytes]) -> bool | None:
        """True if everything matches, None if only the method is wrong, False otherwise."""
        if self.hosts is not None and host.partition(b":")[0].lower() not in self.hosts:
            return False
        for name, value in self.headers:
            got = headers.get(name)
            if got is None or (value is not None and got != value):
                return False
        if self.methods is not None and method not in self.methods:
            return None
        return True

    def forward_path(self, path: bytes, params: dict[str, str]) -> bytes:
        if self.rewrite is not None:
            return _PARAM.sub(lambda m: params.get(m.group(1), ""), self.rewrite).encode()
        if self.config.strip_prefix:
            rest = path[len(self.prefix) :]
            return rest if rest.startswith(b"/") else b"/" + rest
        return path


class NoRoute(LookupError):
    """No route matched; ``method_mismatch`` says a route matched all but the method."""

    def __init__(self, method_mismatch: bool, allowed: frozenset[bytes] = frozenset()) -> None:
        super().__init__("no route")
        self.method_mismatch = method_mismatch
        self.allowed = allowed


class Router(Generic[T]):
    """Finds the route for a normalised path (bytes) plus method, host and headers."""

    def __init__(
        self, routes: Sequence[tuple[RouteConfig, T]], *, case_insensitive: bool = False
    ) -> None:
        self._case_insensitive = case_insensitive
        self._exact: dict[bytes, list[_Candidate[T]]] = {}
        self._patterns: list[_Candidate[T]] = []
        prefixes: list[_Candidate[T]] = []
        for config, payload in routes:
            candidate = _Candidate(config, payload)
            if case_insensitive:
                candidate.prefix = candidate.prefix.lower()
                if candidate.regex is not None:
                    candidate.regex = re.compile(candidate.regex.pattern, re.IGNORECASE)
            if config.kind == "exact":
                key = config.pattern.encode()
                self._exact.setdefault(key.lower() if case_insensitive else key, []).append(
                    candidate
                )
            elif config.kind == "prefix":
                prefixes.append(candidate)
            else:
                self._patterns.append(candidate)
        # Longest prefix wins; stable sort keeps the written order among equal lengths.
        prefixes.sort(key=lambda c: -len(c.prefix))
        self._prefixes = prefixes

    def match(
        self, method: bytes, path: bytes, host: bytes, headers: dict[bytes, bytes]
    ) -> RouteMatch[T]:
        """The matching route, or raises NoRoute."""
        key = path.lower() if self._case_insensitive else path
        # Methods of routes that matched all but the method (for 405); rarely needed.
        allowed: set[bytes] | None = None
        exact = self._exact.get(key) if self._exact else None
        if exact is not None:
            for candidate in exact:
                verdict = candidate.accepts(method, host, headers)
                if verdict:
                    return (candidate.payload, {}, candidate.forward_path(path, {}))
                if verdict is None:
                    allowed = (allowed or set()) | (candidate.methods or set())
        for candidate in self._patterns:
            assert candidate.regex is not None
            found = candidate.regex.match(path)
            if found is None:
                continue
            verdict = candidate.accepts(method, host, headers)
            if verdict:
                params = {
                    k: v.decode("latin-1") for k, v in found.groupdict().items() if v is not None
                }
                return (candidate.payload, params, candidate.forward_path(path, params))
            if verdict is None:
                allowed = (allowed or set()) | (candidate.methods or set())
        for candidate in self._prefixes:
            n = candidate.prefix_length
            # A slice and == costs less than bytes.startswith (no buffer protocol).
            if key[:n] != candidate.prefix:
                continue
            if not (candidate.open_ended or len(key) == n or key[n] == 0x2F):
                continue  # /api must not match /apix
            if candidate.plain:
                return (candidate.payload, {}, path)
            verdict = candidate.accepts(method, host, headers)
            if verdict:
                return (candidate.payload, {}, candidate.forward_path(path, {}))
            if verdict is None:
                allowed = (allowed or set()) | (candidate.methods or set())
        raise NoRoute(allowed is not None, frozenset(allowed or ()))
