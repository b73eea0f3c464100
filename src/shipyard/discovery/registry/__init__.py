"""``shipyard registry``: an embedded service registry speaking Consul's HTTP API.

Clients written for Consul (py-consul, the npm ``consul`` package, curl) register,
query health and watch with blocking queries unchanged; a Shipyard extension,
``/v1/shipyard/attach/{service_id}`` (see :mod:`shipyard.discovery.registry.api`), turns
an instance critical the moment its process's connection drops.
"""

from shipyard.discovery.registry.api import ATTACH_HEARTBEAT, RegistryApi
from shipyard.discovery.registry.catalog import (
    Catalog,
    CatalogChanged,
    CheckDefinition,
    CheckKind,
    CheckState,
    Instance,
    ServiceDefinition,
    Status,
    UnknownCheckError,
    UnknownServiceError,
    attach_check_id,
)
from shipyard.discovery.registry.server import RegistryServer
from shipyard.discovery.registry.wire import WireError, parse_duration, parse_registration

__all__ = [
    # the server
    "RegistryServer",
    "RegistryApi",
    "ATTACH_HEARTBEAT",
    # the catalog (pure core)
    "Catalog",
    "CatalogChanged",
    "CheckDefinition",
    "CheckKind",
    "CheckState",
    "Instance",
    "ServiceDefinition",
    "Status",
    "attach_check_id",
    # errors
    "UnknownServiceError",
    "UnknownCheckError",
    "WireError",
    # the wire format
    "parse_duration",
    "parse_registration",
]
