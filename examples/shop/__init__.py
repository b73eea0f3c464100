"""The reference shop: every Shipyard pattern in one runnable system.

Services (one process each, own database): ``users``, ``products``, ``inventory`` (several
instances), ``orders`` (event-sourced; orchestrated saga or choreography; CQRS read
model over a replicated user cache), ``payments`` (breaker + retry towards
``payment-provider``, a simulated card processor), ``reviews``, ``recommendations``, and
the ``legacy`` monolith being strangled. A gateway with web and mobile frontends sits in
front. :class:`~examples.shop.supervisor.Supervisor` runs it all; ``shipyard up`` is its
command line.
"""

from examples.shop.settings import ShopSettings
from examples.shop.supervisor import Instance, Supervisor, SupervisorError

__all__ = ["Instance", "ShopSettings", "Supervisor", "SupervisorError"]
