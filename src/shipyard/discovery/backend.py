"""The registry port (``RegistryBackend``) and choosing a backend by URL.

Contract every backend keeps (``tests/discovery/test_backend_contract.py`` checks it):

* ``instances(service)`` of a service nobody registered is an empty list, never an error —
  a registry cannot tell "unknown" from "all instances gone"; ``Discovery`` turns an empty
  answer for a never-seen service into ``ServiceNotFound``.
* ``watch(service)`` yields the full list of passing instances at once, then again after
  every change; it raises ``DiscoveryUnavailable`` when the registry cannot be reached.
* ``register`` replaces an existing registration with the same id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from shipyard.core.errors import ConfigError
from shipyard.discovery.model import Instance, Registration

SCHEMES = ("static", "memory", "consul", "etcd", "k8s-dns")


@runtime_checkable
class RegistryBackend(Protocol):
    """Where instances are registered and looked up (Consul, etcd, Kubernetes DNS, memory)."""

    @property
    def url(self) -> str:
        """The backend's URL, for messages (``consul://127.0.0.1:8500``)."""

    async def register(self, registration: Registration) -> None:
        """Add (or replace) an instance."""

    async def deregister(self, instance_id: str) -> None:
        """Remove an instance; unknown ids are ignored."""

    async def instances(self, service: str, *, passing_only: bool = True) -> list[Instance]:
        """Current instances of ``service`` (only healthy ones unless ``passing_only=False``)."""

    def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the passing instances of ``service`` now and after every change."""

    async def close(self) -> None:
        """Release connections and stop keep-alives."""


def backend_from_url(url: str) -> RegistryBackend:
    """Build the backend a URL names: ``static://``, ``memory://``, ``consul://host:port``,
    ``etcd://host:port[/prefix]`` or ``k8s-dns://namespace[?nameserver=…]``."""
    scheme = urlsplit(url).scheme
    if scheme in ("static", "memory"):
        from shipyard.discovery.static import StaticBackend

        return StaticBackend.from_url(url)
    if scheme == "consul":
        from shipyard.discovery.consul import ConsulBackend

        return ConsulBackend.from_url(url)
    if scheme == "etcd":
        from shipyard.discovery.etcd import EtcdBackend

        return EtcdBackend.from_url(url)
    if scheme == "k8s-dns":
        from shipyard.discovery.k8s_dns import KubernetesDnsBackend

        return KubernetesDnsBackend.from_url(url)
    raise ConfigError("url", url, f"scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
