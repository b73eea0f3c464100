"""Database per service: local cache tables of other services' data, fed by their events.

Declare a :class:`ReplicaTable`, say which events upsert or delete its rows, subscribe the
:class:`Replica` to the bus, and :func:`backfill` history from the owner's HTTP API. Stale
and duplicate events are ignored by version; :meth:`Replica.lag` says how far behind it is.
"""

from shipyard.replication.backfill import backfill
from shipyard.replication.errors import BackfillError, ReplicationError
from shipyard.replication.replica import Replica, ReplicaLag, ReplicaTable

__all__ = [
    # declaring and feeding a cache
    "ReplicaTable",
    "Replica",
    "backfill",
    # lag
    "ReplicaLag",
    # errors
    "ReplicationError",
    "BackfillError",
]
