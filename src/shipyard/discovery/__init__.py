"""Service discovery, client side: find instances through a cached, self-refreshing
``Discovery``, spread calls with a balancer, eject failing instances, and register the
running service with ``SelfRegistration``.

Backends are chosen by URL: ``static://``, ``memory://``, ``consul://host:port`` (Consul or
Shipyard's embedded registry), ``etcd://host:port[/prefix]``, ``k8s-dns://namespace``.
"""

from typing import TYPE_CHECKING, Any

from shipyard.discovery.backend import RegistryBackend, backend_from_url
from shipyard.discovery.balancer import (
    Balancer,
    LeastOutstanding,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
)
from shipyard.discovery.client import Discovery
from shipyard.discovery.consul import ConsulBackend
from shipyard.discovery.errors import (
    DiscoveryError,
    DiscoveryUnavailable,
    NoHealthyInstance,
    RegistrationNotSupported,
    ServiceNotFound,
)
from shipyard.discovery.etcd import EtcdBackend
from shipyard.discovery.model import CRITICAL, PASSING, WARNING, Instance, Registration, Status
from shipyard.discovery.outlier import InstanceEjected, OutlierDetector
from shipyard.discovery.registry import RegistryServer
from shipyard.discovery.self_registration import SelfRegistration
from shipyard.discovery.static import StaticBackend

if TYPE_CHECKING:
    from shipyard.discovery.k8s_dns import KubernetesDnsBackend


def __getattr__(name: str) -> Any:
    # dnspython is an optional extra (shipyard[dns]): import the DNS backend on first use.
    if name == "KubernetesDnsBackend":
        from shipyard.discovery.k8s_dns import KubernetesDnsBackend

        return KubernetesDnsBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # model
    "Instance",
    "Registration",
    "Status",
    "PASSING",
    "WARNING",
    "CRITICAL",
    # the client, and the embedded registry it can talk to
    "Discovery",
    "SelfRegistration",
    "RegistryServer",
    # balancing and ejection
    "Balancer",
    "RoundRobin",
    "Random",
    "LeastOutstanding",
    "PowerOfTwoChoices",
    "OutlierDetector",
    "InstanceEjected",
    # backends (port + adapters)
    "RegistryBackend",
    "backend_from_url",
    "StaticBackend",
    "ConsulBackend",
    "EtcdBackend",
    "KubernetesDnsBackend",
    # errors
    "DiscoveryError",
    "ServiceNotFound",
    "NoHealthyInstance",
    "DiscoveryUnavailable",
    "RegistrationNotSupported",
]
