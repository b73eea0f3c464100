"""Every IdempotencyStore behaves the same: one winner per key, replayable results, expiry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.core import ConfigError
from shipyard.idempotency import IdempotencyRecord, Lease, SqlIdempotencyStore, StoredResponse
from shipyard.storage import open_database
from tests.idempotency.conftest import Backend

RESPONSE = StoredResponse(
    201,
    ((b"content-type", b"application/json"), (b"location", b"/orders/7")),
    b'{"order": 7}\x00\xff',
)


async def won(
    backend: Backend, key: str = "k", fingerprint: str = "fp", lease: float = 30
) -> Lease:
    held = await backend.store.acquire(key, fingerprint, lease=lease)
    assert isinstance(held, Lease), held
    return held


async def test_the_first_acquire_of_a_key_wins_a_lease(backend: Backend) -> None:
    lease = await won(backend, "k", "fp")
    assert (lease.key, lease.fingerprint) == ("k", "fp")
    assert lease.expires_at > backend.clock.now()


async def test_a_second_acquire_sees_the_first_still_in_progress(backend: Backend) -> None:
    await won(backend, "k", "fp")
    held = await backend.store.acquire("k", "fp", lease=30)
    assert isinstance(held, IdempotencyRecord)
    assert (held.state, held.fingerprint, held.response) == ("in_progress", "fp", None)


async def test_keys_do_not_interfere(backend: Backend) -> None:
    await won(backend, "a")
    await won(backend, "b")


async def test_concurrent_acquires_have_exactly_one_winner(backend: Backend) -> None:
    results = await asyncio.gather(*(backend.store.acquire("k", "fp", lease=30) for _ in range(25)))
    assert sum(isinstance(r, Lease) for r in results) == 1


async def test_a_completed_response_comes_back_byte_for_byte(backend: Backend) -> None:
    lease = await won(backend)
    assert await backend.store.complete(lease, RESPONSE, ttl=3600) is True
    held = await backend.store.acquire("k", "fp", lease=30)
    got = await backend.store.get("k")
    assert isinstance(held, IdempotencyRecord)
    assert (held.state, held.response) == ("completed", RESPONSE)
    assert got == held


async def test_a_different_fingerprint_is_visible_on_the_held_record(backend: Backend) -> None:
    lease = await won(backend, "k", "first")
    in_progress = await backend.store.acquire("k", "second", lease=30)
    await backend.store.complete(lease, RESPONSE, ttl=3600)
    completed = await backend.store.acquire("k", "second", lease=30)
    assert isinstance(in_progress, IdempotencyRecord)
    assert isinstance(completed, IdempotencyRecord)
    assert (in_progress.fingerprint, completed.fingerprint) == ("first", "first")


async def test_a_released_key_can_be_acquired_again(backend: Backend) -> None:
    await backend.store.release(await won(backend))
    assert await backend.store.get("k") is None
    await won(backend)


async def test_an_expired_lease_frees_the_key_and_the_old_holder_cannot_complete(
    backend: Backend,
) -> None:
    stale = await won(backend, lease=backend.short)
    await backend.outlive("k")
    fresh = await won(backend)
    assert await backend.store.complete(stale, RESPONSE, ttl=3600) is False
    await backend.store.release(stale)  # must not free the new holder's key
    held = await backend.store.acquire("k", "fp", lease=30)
    assert isinstance(held, IdempotencyRecord)
    assert held.state == "in_progress"
    assert await backend.store.complete(fresh, RESPONSE, ttl=3600) is True


async def test_completing_after_release_stores_nothing(backend: Backend) -> None:
    lease = await won(backend)
    await backend.store.release(lease)
    assert await backend.store.complete(lease, RESPONSE, ttl=3600) is False
    assert await backend.store.get("k") is None


async def test_an_expired_response_is_forgotten_and_purged(backend: Backend) -> None:
    await backend.store.complete(await won(backend, "old"), RESPONSE, ttl=backend.short)
    await backend.store.complete(await won(backend, "new"), RESPONSE, ttl=3600)
    await backend.outlive("old")
    assert await backend.store.get("old") is None
    assert await backend.store.purge_expired() == (0 if backend.expires_by_itself else 1)
    assert await backend.store.purge_expired() == 0
    assert (await backend.store.get("new")) is not None
    await won(backend, "old")


async def test_an_unknown_key_has_no_record(backend: Backend) -> None:
    assert await backend.store.get("never-seen") is None


async def test_a_sql_table_name_must_be_a_plain_identifier(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'service.db'}")
    try:
        with pytest.raises(ConfigError) as error:
            SqlIdempotencyStore(db, table="keys; DROP TABLE orders")
        assert error.value.field == "table"
    finally:
        await db.close()
