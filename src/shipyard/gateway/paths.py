"""Request-target normalisation, done once BEFORE routing and auth.

An attacker who can make the gateway and the upstream disagree about a path can reach a
protected route through a public one (``/public/../admin``, ``/%2e%2e/admin``,
``//admin``, ``\\admin``). So the gateway decides what the path *is* here, matches and
authenticates that, and forwards exactly that string: percent-encoded unreserved
characters are decoded, backslashes become slashes, repeated slashes collapse, ``.`` and
``..`` segments are resolved, and anything that would climb above the root is refused.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
# Bytes that have no business in a path; refusing them is simpler than guessing meaning.
_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]|%(?:00|0[aAdD])|%(?![0-9A-Fa-f]{2})")
# Only paths containing one of these need the slow path.
_SUSPICIOUS = re.compile(rb"%|\\|//|/\.")
# A path of only these bytes (unreserved, sub-delims, ':', '@', '/'), without "//" or
# "/.", is already canonical: one search settles the common case (cheaper than any
# combination of bytes methods, which each go through the buffer protocol).
_NEEDS_CARE = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/]|//|/\.")


class BadPath(ValueError):
    """The request target cannot be normalised safely (the client gets 400)."""


def _decode(match: re.Match[bytes]) -> bytes:
    value = int(match.group(1), 16)
    if value in _UNRESERVED:
        return bytes((value,))
    if value == 0x5C:  # an encoded backslash is a separator to some upstreams
        return b"/"
    return b"%" + match.group(1).upper()


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of an origin-form or absolute-form request target.

    The authority of an absolute-form target (``http://evil/x``) is dropped on purpose:
    the configuration, never the request, chooses where the gateway connects.
    """
    if not target.startswith(b"/"):
        if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            rest = target.split(b"//", 1)[1]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        else:
            raise BadPath("request target must be an absolute path")
    path, _, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    return path, query


def normalise_path(path: bytes) -> bytes:
    """The canonical form of ``path`` (which starts with ``/``); raises BadPath."""
    if _NEEDS_CARE.search(path) is None:
        return path
    if _FORBIDDEN.search(path):
        raise BadPath("path contains control characters or a broken %-escape")
    if not _SUSPICIOUS.search(path):
        return path
    if b"%" in path:
        path = _PERCENT.sub(_decode, path)
    path = path.replace(b"\\", b"/")
    segments: list[bytes] = []
    parts = path.split(b"/")
    for segment in parts[1:]:
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if not segments:
                raise BadPath("path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    trailing = parts[-1] in (b"", b".", b"..") and bool(segments)
    return b"/" + b"/".join(segments) + (b"/" if trailing else b"")
