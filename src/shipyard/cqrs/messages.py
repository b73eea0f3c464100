"""Typed commands and queries: ``msgspec`` structs validated against their declared types."""

from __future__ import annotations

import re
import uuid
from typing import Any, ClassVar

import msgspec

from shipyard.cqrs.errors import CommandValidationError


def _new_id() -> str:
    return str(uuid.uuid4())


class Command(msgspec.Struct, kw_only=True):
    """Base of commands: an intent to change state, named in the imperative (``PlaceOrder``).

    ``command_id`` identifies one request: resending it with the same id is a duplicate
    that the idempotency middleware answers from its record instead of running again.
    """

    command_name: ClassVar[str]
    command_id: str = msgspec.field(default_factory=_new_id)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.command_name = cls.__name__


class Query(msgspec.Struct, kw_only=True):
    """Base of queries: a question answered from read models, never changing state."""

    query_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.query_name = cls.__name__


_PATH = re.compile(r" - at `\$\.?([^`]*)`")


class Validator:
    """Checks a struct against its declared types and ``msgspec.Meta`` constraints.

    Struct construction does not check them, so the value makes a round trip through the
    type's decoder (built once per type).
    """

    def __init__(self, struct_type: type[msgspec.Struct]) -> None:
        self._type = struct_type
        self._decoder = msgspec.json.Decoder(struct_type)

    def check(self, value: msgspec.Struct) -> None:
        """Raise :class:`CommandValidationError` naming the first offending field."""
        try:
            self._decoder.decode(msgspec.json.encode(value))
        except msgspec.ValidationError as error:
            message = str(error)
            match = _PATH.search(message)
            field = (match.group(1) if match else "") or "(message)"
            problem = message[: match.start()] if match else message
            raise CommandValidationError(self._type.__name__, field, problem) from None
