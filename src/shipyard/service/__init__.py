"""The service runtime: :class:`Service` wraps a Starlette/FastAPI (or any ASGI) app with
health probes, ``/metrics``, request logs and traces, idempotency keys, fault injection,
self-registration and graceful shutdown; ``run`` serves it with uvicorn.

service = Service("orders", app, discovery="consul://127.0.0.1:8500", port=8001,
                  health={"db": sqlite_check("var/orders.db")}, chaos_token=token)
service.on_shutdown(db.close)
# shell: shipyard run orders.main:service --port 8001
"""

from shipyard.service.errors import ServiceError, ServiceStartupError
from shipyard.service.server import ServiceServer, load_service, run, uvicorn_config
from shipyard.service.service import (
    CHAOS_PATH,
    HEALTH_PREFIX,
    METRICS_PATH,
    Middleware,
    Service,
    ServiceApp,
    ShutdownCallback,
    State,
)

__all__ = [
    # the service
    "Service",
    "ServiceApp",
    "State",
    "Middleware",
    "ShutdownCallback",
    "METRICS_PATH",
    "CHAOS_PATH",
    "HEALTH_PREFIX",
    # serving
    "run",
    "load_service",
    "uvicorn_config",
    "ServiceServer",
    # errors
    "ServiceError",
    "ServiceStartupError",
]
