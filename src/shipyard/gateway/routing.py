"""Route matching, compiled once from the configuration.

Exact paths are a dict lookup; templates and regexes are compiled patterns tried in the
order they were written; prefixes are tried longest first. Only routes whose path
matches are checked for host, headers and method, so a path that exists with another
method answers 405 instead of 404.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

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


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[T]):
    """The route that matched, its path parameters and the path to forward upstream."""

    route: T
    params: dict[str, str]
    upstream_path: bytes


class _Candidate(Generic[T]):
    __slots__ = ("config", "headers", "hosts", "methods", "payload", "prefix", "regex", "rewrite")

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
        self.regex: re.Pattern[bytes] | None = None
        if config.kind == "template":
            self.regex = compile_template(config.pattern)
        elif config.kind == "regex":
            self.regex = re.compile(config.pattern.encode())
        self.rewrite = config.rewrite

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
        mismatch = False
        allowed: set[bytes] = set()
        exact = self._exact.get(key)
        if exact is not None:
            for candidate in exact:
                verdict = candidate.accepts(method, host, headers)
                if verdict:
                    return RouteMatch(candidate.payload, {}, candidate.forward_path(path, {}))
                if verdict is None:
                    mismatch = True
                    allowed |= candidate.methods or set()
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
                return RouteMatch(candidate.payload, params, candidate.forward_path(path, params))
            if verdict is None:
                mismatch = True
                allowed |= candidate.methods or set()
        for candidate in self._prefixes:
            prefix = candidate.prefix
            if not key.startswith(prefix):
                continue
            if len(key) > len(prefix) and key[len(prefix)] != 0x2F and not prefix.endswith(b"/"):
                continue  # /api must not match /apix
            verdict = candidate.accepts(method, host, headers)
            if verdict:
                return RouteMatch(candidate.payload, {}, candidate.forward_path(path, {}))
            if verdict is None:
                mismatch = True
                allowed |= candidate.methods or set()
        raise NoRoute(mismatch, frozenset(allowed))
