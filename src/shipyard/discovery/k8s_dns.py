"""Kubernetes DNS backend: read the instances a headless Service publishes in DNS.

For a headless Service, cluster DNS answers ``_<port>._tcp.<service>.<namespace>.svc.<domain>``
with one SRV record per ready pod (target = the pod's name, port = the named port), and the
pod names resolve to their IPs. Kubernetes decides what is registered and ready, so this
backend is read-only and every instance it lists is passing. DNS cannot push changes, so
``watch`` re-resolves periodically: after the records' TTL, kept within
``[min_refresh, max_refresh]`` seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

try:
    import dns.asyncresolver
    import dns.exception
    import dns.rdatatype
    import dns.resolver
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the k8s-dns:// discovery backend needs dnspython: install shipyard[dns]"
    ) from missing

from shipyard.core import validation
from shipyard.core.clock import SYSTEM_CLOCK, Clock
from shipyard.core.errors import ConfigError
from shipyard.discovery.errors import DiscoveryUnavailable, RegistrationNotSupported
from shipyard.discovery.model import Instance, Registration, parse_host_port

_READ_ONLY = (
    "Kubernetes registers pods itself (a Service selects them and readiness probes gate "
    "them); deploy the pod with a readiness probe instead of registering it"
)


class KubernetesDnsBackend:
    """Registry backend reading SRV + A records (``k8s-dns://namespace?…``)."""

    def __init__(
        self,
        namespace: str,
        *,
        nameserver: str | None = None,
        domain: str = "cluster.local",
        port_name: str = "http",
        timeout: float = 2.0,
        min_refresh: float = 1.0,
        max_refresh: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not namespace:
            raise ConfigError("namespace", namespace, "must name a Kubernetes namespace")
        self.namespace = namespace
        self.domain = domain.strip(".")
        self.port_name = port_name
        self.min_refresh = validation.positive("min_refresh", min_refresh)
        self.max_refresh = max(validation.positive("max_refresh", max_refresh), self.min_refresh)
        self._clock = clock
        query = f"?nameserver={nameserver}" if nameserver else ""
        self._url = f"k8s-dns://{namespace}{query}"
        if nameserver is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            host, port = parse_host_port(nameserver, field_name="nameserver")
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [host]
            self._resolver.port = port
        self._resolver.lifetime = validation.positive("timeout", timeout)

    @classmethod
    def from_url(cls, url: str) -> KubernetesDnsBackend:
        """Parse ``k8s-dns://namespace?nameserver=host:port&domain=…&port_name=…``."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"nameserver", "domain", "port_name"}
        if parts.scheme != "k8s-dns" or not parts.netloc or unknown:
            raise ConfigError(
                "url", url, "must look like k8s-dns://namespace[?nameserver=&domain=&port_name=]"
            )
        return cls(
            parts.netloc,
            nameserver=query.get("nameserver"),
            domain=query.get("domain", "cluster.local"),
            port_name=query.get("port_name", "http"),
        )

    @property
    def url(self) -> str:
        """``k8s-dns://namespace[?nameserver=…]``."""
        return self._url

    async def register(self, registration: Registration) -> None:
        """Always raises ``RegistrationNotSupported``: Kubernetes owns registration."""
        raise RegistrationNotSupported(self._url, _READ_ONLY)

    async def deregister(self, instance_id: str) -> None:
        """Always raises ``RegistrationNotSupported``: Kubernetes owns registration."""
        raise RegistrationNotSupported(self._url, _READ_ONLY)

    async def instances(self, service: str, *, passing_only: bool = True) -> list[Instance]:
        """The pods the SRV record lists (Kubernetes only publishes ready ones)."""
        instances, _ = await self._resolve(service)
        return instances

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield now, then re-resolve after each TTL and yield when the answer changes."""
        last, ttl = await self._resolve(service)
        yield last
        while True:
            await self._clock.sleep(min(max(ttl, self.min_refresh), self.max_refresh))
            current, ttl = await self._resolve(service)
            if current != last:
                last = current
                yield current

    async def close(self) -> None:
        """Nothing to release."""

    async def _resolve(self, service: str) -> tuple[list[Instance], float]:
        name = f"_{self.port_name}._tcp.{service}.{self.namespace}.svc.{self.domain}."
        try:
            srv = await self._resolver.resolve(name, dns.rdatatype.SRV)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], self.min_refresh
        except dns.exception.DNSException as exc:
            raise DiscoveryUnavailable(self._url, f"{name}: {exc}") from exc
        ttl = float(srv.rrset.ttl) if srv.rrset is not None else self.min_refresh
        instances = []
        for record in srv:
            target = record.target.to_text()
            try:
                addresses = await self._resolver.resolve(target, dns.rdatatype.A)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue  # the pod is gone but the SRV answer was cached; skip it
            except dns.exception.DNSException as exc:
                raise DiscoveryUnavailable(self._url, f"{target}: {exc}") from exc
            if addresses.rrset is not None:
                ttl = min(ttl, float(addresses.rrset.ttl))
            pod = target.rstrip(".")
            for address in addresses:
                instances.append(
                    Instance(
                        id=f"{pod}:{record.port}",
                        service=service,
                        address=address.to_text(),
                        port=int(record.port),
                        meta={"target": pod},
                    )
                )
        instances.sort(key=lambda i: i.id)
        return instances, ttl
