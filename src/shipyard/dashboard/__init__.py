"""The live dashboard: services and instances with health, circuit breakers, rate
limiters, sagas with their timelines, event flow — and chaos controls (latency, error
rates, kill / restart), pushed to the browser over Server-Sent Events.

dashboard = Dashboard(registry_url="consul://127.0.0.1:8500",
                      saga_api_url="http://127.0.0.1:8003", chaos_token=token,
                      control=supervisor)          # anything with instances/kill/restart
# serve ``dashboard`` with uvicorn, or: shipyard dashboard --registry ... --sagas ...
"""

from shipyard.dashboard.app import MAX_BODY, TOKEN_HEADER, Dashboard
from shipyard.dashboard.collector import SAGA_STATES, Collector
from shipyard.dashboard.control import (
    ManagedProcess,
    ProcessControl,
    ProcessSpec,
    SubprocessControl,
)
from shipyard.dashboard.errors import SourceUnavailable, UnknownInstanceError
from shipyard.dashboard.faults import Target, faults_from_request, send_faults
from shipyard.dashboard.scrape import InstanceSample, RateWindow, parse_metrics
from shipyard.dashboard.snapshot import (
    BreakerView,
    CheckView,
    DatabasePoolView,
    FlowView,
    InstanceView,
    LimiterView,
    RequestsView,
    SagasView,
    SagaView,
    ServiceView,
    Snapshot,
)
from shipyard.dashboard.sse import SnapshotStream

__all__ = [
    # the app
    "Dashboard",
    "TOKEN_HEADER",
    "MAX_BODY",
    # collecting
    "Collector",
    "SnapshotStream",
    "SAGA_STATES",
    "parse_metrics",
    "InstanceSample",
    "RateWindow",
    # the snapshot
    "Snapshot",
    "ServiceView",
    "InstanceView",
    "CheckView",
    "RequestsView",
    "BreakerView",
    "DatabasePoolView",
    "LimiterView",
    "SagasView",
    "SagaView",
    "FlowView",
    # controls
    "ProcessControl",
    "ManagedProcess",
    "SubprocessControl",
    "ProcessSpec",
    "faults_from_request",
    "send_faults",
    "Target",
    # errors
    "UnknownInstanceError",
    "SourceUnavailable",
]
