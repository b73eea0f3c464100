"""Sagas: durable orchestration with compensation and crash recovery, choreography with a
tracker, and a harness that proves a saga under every failure and crash
(:mod:`shipyard.saga.testing`).

Declare a :class:`SagaDefinition` of :class:`Step` s, register it on an
:class:`Orchestrator` over the service's database, and ``await orchestrator.execute(
"order", data)``; after a restart ``await orchestrator.recover()`` resumes every
unfinished saga where it stopped. Several orchestrators may share one saga log: give
each an ``owner=`` and call ``start_heartbeat()``; each saga is leased to one of them,
and a dead one's sagas are taken over when its leases expire.
"""

from shipyard.saga.choreography import Participant, StepRejected, carry
from shipyard.saga.definition import (
    Action,
    CommandBuilder,
    SagaDefinition,
    Step,
    StepContext,
    StepShape,
)
from shipyard.saga.diagram import mermaid, saga_diagram
from shipyard.saga.errors import (
    LeaseLostError,
    ReplyTimeoutError,
    SagaDefinitionError,
    SagaError,
    SagaNotFound,
    SagaVersionMismatchError,
    SemanticLockError,
    UnknownSagaError,
)
from shipyard.saga.http import JsonPoster, http_action
from shipyard.saga.locks import SemanticLock
from shipyard.saga.orchestrator import CommitHook, Orchestrator, SagaEvent
from shipyard.saga.postgres import PostgresSagaLog
from shipyard.saga.query import saga_api, saga_view, show_saga, timeline_view
from shipyard.saga.record import SagaRecord, SagaState, StepFailure, Transition, TransitionKind
from shipyard.saga.reply import StepReply, reply_to, saga_headers
from shipyard.saga.sqlite import SqliteSagaLog
from shipyard.saga.store import SagaLog, SqlSagaLog, saga_log_for
from shipyard.saga.tracker import ChoreographyTracker, Flow, FlowEvent, FlowNotFound, FlowState

__all__ = [
    # declaring sagas
    "SagaDefinition",
    "Step",
    "StepContext",
    "StepFailure",
    "StepShape",
    "Action",
    "CommandBuilder",
    # orchestration
    "Orchestrator",
    "SagaEvent",
    "CommitHook",
    "StepReply",
    "reply_to",
    "saga_headers",
    "http_action",
    "JsonPoster",
    "SemanticLock",
    # the saga log
    "SagaLog",
    "SqlSagaLog",
    "SqliteSagaLog",
    "PostgresSagaLog",
    "saga_log_for",
    "SagaRecord",
    "SagaState",
    "Transition",
    "TransitionKind",
    # query API and diagrams
    "saga_api",
    "show_saga",
    "saga_view",
    "timeline_view",
    "saga_diagram",
    "mermaid",
    # choreography
    "Participant",
    "StepRejected",
    "carry",
    "ChoreographyTracker",
    "Flow",
    "FlowEvent",
    "FlowState",
    "FlowNotFound",
    # errors
    "SagaError",
    "SagaDefinitionError",
    "SagaNotFound",
    "UnknownSagaError",
    "SagaVersionMismatchError",
    "SemanticLockError",
    "ReplyTimeoutError",
    "LeaseLostError",
]
