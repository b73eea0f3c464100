"""Fault injection for tests and demos: added latency, error rates and refused traffic,
as raw ASGI middleware switchable at run time through a token-guarded admin endpoint.

chaos = Chaos()
app = ChaosMiddleware(app, chaos)
admin = ChaosAdminApp(chaos, token=os.environ["CHAOS_TOKEN"])   # serve at /admin/chaos
chaos.set([Fault(path_prefix="/orders", latency=0.2, error_rate=0.1)])
"""

from shipyard.chaos.admin import MAX_BODY, ChaosAdminApp
from shipyard.chaos.faults import Chaos, Fault, Refuse
from shipyard.chaos.middleware import CHAOS_HEADER, ChaosMiddleware

__all__ = [
    # faults
    "Fault",
    "Refuse",
    "Chaos",
    # ASGI
    "ChaosMiddleware",
    "ChaosAdminApp",
    "CHAOS_HEADER",
    "MAX_BODY",
]
