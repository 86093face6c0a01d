"""The egress policy: which network addresses a job may make this process connect to.

A job names hosts (an `Http` input, S3-compatible and Azure endpoints, FTP servers, webhooks,
brokers, the CPIX `ApiUrl`), and the job comes from any API client. A *restricted* policy
(`vipe serve`, `vipe worker`) refuses loopback, link-local, private, multicast, unspecified and
reserved addresses unless one of the `allowed` networks (`--allow-network CIDR`,
`VIPE_ALLOW_NETWORKS`) admits them. An *unrestricted* one (the default, `vipe run`) is the
operator's own trust: every helper here then behaves as the standard library does.

How it holds:

- **At connect time, on the resolved address.** A host is resolved once, every address is
  checked, and the socket connects to a checked address (never to the name again), so a DNS
  answer that changes between a check and the connect (DNS rebinding) gains nothing.
  Addresses a rule refuses are dropped; a host with no admitted address is refused.
- **Every numeric spelling normalised.** `2130706433`, `0x7f.1`, `127.1`, `017700000001`,
  `[::ffff:127.0.0.1]` are all 127.0.0.1; IPv4 inside IPv6 (IPv4-mapped, 6to4, NAT64) is
  judged by its IPv4 address.
- **Every redirect re-checked** by the opener's redirect handler, and again when it connects.
- **Refusals** are `EgressDenied` (kind `denied`), whose message names the job field and the
  rule ("ContentAcquisition.UriPath: address 127.0.0.1 is loopback; allowed only with
  --allow-network"). Nothing is sent, so nothing tells what listens there.

The connection helpers, one per kind of client:

- `EgressPolicy.create_connection`: a `socket.create_connection` replacement (ftplib, raw
  sockets).
- `EgressPolicy.opener`: a urllib `OpenerDirector` (Http input, webhooks, CPIX) whose HTTP(S)
  connections connect only to checked addresses (TLS: SNI and the certificate check stay on
  the host name) and whose redirect handler re-checks every target. When restricted it ignores
  the proxy environment variables: a proxy would connect where the policy cannot look.
- `urllib3_pool_classes`, `guard_botocore_client`, `guarded_requests_session`: the same for
  urllib3-based SDKs (boto3/botocore, the Azure SDK through requests).

Limits: with a proxy configured for botocore (`HTTPS_PROXY`, honoured by botocore), the proxy's
address is what is checked at connect time, the endpoint only when its client is opened. A
client that resolves and connects inside a library without a hook (the Service Bus AMQP
transport) is checked when it is opened, not at its connect.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl
    import urllib.request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_NETWORKS_ENV = "VIPE_ALLOW_NETWORKS"
HINT = "allowed only with --allow-network"
DEFAULT_PORTS = {"http": 80, "https": 443}

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)
# One part of an inet_aton spelling: hex (0x..), octal (leading 0) or decimal.
_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")


class _Default:
    """`timeout` not given: the socket module's default applies."""


_DEFAULT_TIMEOUT: Any = _Default()


class EgressDenied(Exception):
    """A connection the egress policy refuses. `field` is the job field that named the host,
    `reason` the rule; the message is `<field>: <reason>`. Like a StorageError, its `kind` is
    `denied` and it is never worth a retry."""

    kind: ClassVar[str] = "denied"
    retryable: ClassVar[bool] = False

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Address:
    """One resolved (and, when the policy is restricted, checked) address of a host."""

    ip: IPAddress
    family: int
    sockaddr: tuple[Any, ...]

    def __str__(self) -> str:
        return str(self.ip)


def parse_numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host spelling stands for, or None for a name.

    Accepts what the C resolver accepts: IPv6 literals (bracketed or not, with a zone) and the
    inet_aton forms of IPv4 (`127.1`, `2130706433`, `0x7f.1`, `017700000001`, `0177.0.0.1`).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            return None
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_PART.match(part) for part in parts):
        return None
    values = [
        int(part[2:] or "0", 16)
        if part[:2] in ("0x", "0X")
        else int(part, 8 if part[0] == "0" else 10)
        for part in parts
    ]
    # The last part fills the bytes the others leave: a.b.c.d, a.b.cd, a.bcd, abcd.
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (5 - len(parts))):
        return None
    number = last
    for position, value in enumerate(leading):
        number |= value << (8 * (3 - position))
    return ipaddress.IPv4Address(number)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), which is where it goes."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_rule(ip: IPAddress) -> str | None:
    """Which rule refuses `ip` (`loopback`, `link-local`, `private`, `multicast`,
    `unspecified`, `reserved`), or None for a globally routable address."""
    target = _embedded_ipv4(ip) or ip
    if target.is_unspecified:
        return "unspecified"
    if target.is_loopback:
        return "loopback"
    if target.is_link_local:
        return "link-local"
    if target.is_multicast:
        return "multicast"
    if target.is_reserved:
        return "reserved"
    site_local = isinstance(target, ipaddress.IPv6Address) and target.is_site_local
    if target.is_private or site_local or target in _SHARED:
        return "private"
    if not target.is_global:
        return "reserved"
    return None


def _plain(ip: IPAddress) -> IPAddress:
    """`ip` without an IPv6 zone (`fe80::1%eth0`), for comparisons."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    return ip


@dataclass(frozen=True)
class EgressPolicy:
    """`restricted`: refuse loopback, link-local, private, multicast, unspecified and reserved
    addresses unless one of `allowed` admits them. Unrestricted (the default) is the operator's
    own trust, as `vipe run` has it."""

    restricted: bool = False
    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], restricted: bool = True) -> EgressPolicy:
        """A policy admitting the given networks: `--allow-network` values and/or the value of
        VIPE_ALLOW_NETWORKS, each a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address, several
        in one value separated by commas. A bad one is a ValueError that names it."""
        networks: list[Network] = []
        for value in cidrs:
            for item in value.split(","):
                text = item.strip()
                if not text:
                    continue
                try:
                    network = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise ValueError(
                        f"--allow-network: {text!r} is not a network "
                        "(a CIDR such as 10.0.0.0/8 or fd00::/8, or an address)"
                    ) from None
                if network not in networks:
                    networks.append(network)
        return cls(restricted=restricted, allowed=tuple(networks))

    # -- checks --------------------------------------------------------------------------------

    def admits(self, ip: IPAddress) -> bool:
        """Whether a connection to `ip` is allowed."""
        return self.refusal(ip) is None

    def refusal(self, ip: IPAddress) -> str | None:
        """The rule that refuses `ip` under this policy, or None when it is allowed."""
        if not self.restricted:
            return None
        rule = address_rule(ip)
        if rule is None:
            return None
        candidates = [_plain(ip)]
        if (embedded := _embedded_ipv4(ip)) is not None:
            candidates.append(embedded)
        for network in self.allowed:
            if any(c.version == network.version and c in network for c in candidates):
                return None
        return rule

    def check_host(self, host: str, port: int, what: str) -> list[Address]:
        """Resolve `host` once and return the addresses a connection may use, in the resolver's
        order: all of them when unrestricted, the admitted ones when restricted. `what` is the
        job field that named the host. Raises EgressDenied when no address is admitted (naming
        the first refused one), socket.gaierror when the name does not resolve."""
        numeric = parse_numeric_host(host)
        if numeric is not None:  # normalised: connect to exactly the address that is checked
            infos = socket.getaddrinfo(
                str(numeric), port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        else:
            if not host or "\0" in host:
                raise EgressDenied(what, "names no host")
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[Address] = []
        refused: list[tuple[IPAddress, str]] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(sockaddr[0])
            if any(a.sockaddr == sockaddr for a in addresses):
                continue
            rule = self.refusal(ip)
            if rule is not None:
                refused.append((ip, rule))
            else:
                addresses.append(Address(ip, family, tuple(sockaddr)))
        if not addresses:
            if refused:
                ip, rule = refused[0]
                address = f"address {ip}"
                if (embedded := _embedded_ipv4(ip)) is not None:
                    address += f" (IPv4 {embedded})"
                if host.strip().strip("[]") == str(ip):
                    raise EgressDenied(what, f"{address} is {rule}; {HINT}")
                # A name or another spelling of the address: say what it stands for.
                raise EgressDenied(what, f"{host} is {address}, which is {rule}; {HINT}")
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no IP address")
        return addresses

    def check_url(self, url: str, what: str) -> list[Address]:
        """`check_host` for the host and port of an http(s) URL."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise EgressDenied(what, "the URL names no host")
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 443)
        return self.check_host(parts.hostname, port, what)

    def check_redirect(self, url: str, what: str) -> list[Address]:
        """`check_url` for the target of a redirect, which must be http(s) too."""
        scheme = urlsplit(url).scheme
        if scheme.lower() not in DEFAULT_PORTS:
            raise EgressDenied(what, f"a redirect to {scheme}: is not followed")
        return self.check_url(url, f"{what} (redirect)")

    # -- connections ---------------------------------------------------------------------------

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: Any = _DEFAULT_TIMEOUT,
        source_address: tuple[str, int] | None = None,
        *,
        what: str,
        socket_options: Iterable[tuple[Any, ...]] | None = None,
    ) -> socket.socket:
        """`socket.create_connection` through the policy: the host is resolved once and the
        socket connects to a checked address. `timeout` may be a number, None (blocking) or
        any other object (a library's "default" marker: the socket default applies)."""
        has_timeout = timeout is None or isinstance(timeout, int | float)
        if not self.restricted and not socket_options:  # the standard library, unchanged
            if has_timeout:
                return socket.create_connection(address, timeout, source_address)
            return socket.create_connection(address, source_address=source_address)
        host, port = address[0], address[1]
        last_error: OSError | None = None
        for checked in self.check_host(host, port, what):
            sock = socket.socket(checked.family, socket.SOCK_STREAM)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if has_timeout:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(checked.sockaddr)
                return sock
            except OSError as error:
                sock.close()
                last_error = error
        assert last_error is not None  # check_host returns at least one address
        raise last_error

    def opener(
        self,
        what: str,
        *handlers: urllib.request.BaseHandler,
        context: ssl.SSLContext | None = None,
        redirects: bool = True,
    ) -> urllib.request.OpenerDirector:
        """A urllib opener for requests a job causes (`what`: the job field with the URL).

        `context`: the TLS context for https (None: the default, with verification).
        `redirects=False`: a 3xx is not followed (urllib raises HTTPError with its status).
        `handlers`: extra handlers (authentication, cookies); handlers that open connections
        or follow redirects themselves are refused, since they would bypass the policy.

        Unrestricted, this is `urllib.request.build_opener` as before. Restricted: HTTP(S)
        only, each connection to a checked address, each redirect target checked before it is
        followed, no proxy from the environment."""
        from storage.egress_urllib import build_opener  # http.client: only jobs that fetch

        return build_opener(self, what, handlers, context, redirects)


UNRESTRICTED = EgressPolicy()


# -- urllib3 (botocore, requests) --------------------------------------------------------------


class _GuardedConnectionMixin:
    """Mixed into a urllib3 connection class: the TCP connect goes through the policy (TLS is
    wrapped afterwards by urllib3, with the host name)."""

    egress_policy: ClassVar[EgressPolicy]
    egress_what: ClassVar[str]
    # Attributes of the urllib3 connection this is mixed into.
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        from urllib3.exceptions import (
            ConnectTimeoutError,
            NameResolutionError,
            NewConnectionError,
        )

        try:
            return self.egress_policy.create_connection(
                (self._dns_host, self.port),
                self.timeout,
                self.source_address,
                what=self.egress_what,
                socket_options=self.socket_options,
            )
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error  # type: ignore[arg-type]
        except TimeoutError as error:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        except OSError as error:
            raise NewConnectionError(
                self,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {error}",
            ) from error


def urllib3_pool_classes(
    policy: EgressPolicy, what: str, pools: Mapping[str, type]
) -> dict[str, type]:
    """Subclasses of the given urllib3 connection pool classes (scheme -> class) whose
    connections connect only to addresses `policy` admits."""
    guarded: dict[str, type] = {}
    for scheme, pool in pools.items():
        connection: type = getattr(pool, "ConnectionCls")  # noqa: B009 - any urllib3 pool
        checked = type(
            f"Egress{connection.__name__}",
            (_GuardedConnectionMixin, connection),
            {"egress_policy": policy, "egress_what": what},
        )
        guarded[scheme] = type(f"Egress{pool.__name__}", (pool,), {"ConnectionCls": checked})
    return guarded


def guard_botocore_client(client: Any, policy: EgressPolicy, what: str) -> None:
    """Make a boto3/botocore client (before its first request) connect only to addresses
    `policy` admits; nothing changes when the policy is unrestricted.

    botocore offers no public hook for its connections: this swaps the connection pool classes
    of the client's URLLib3Session (shared with its proxy managers). Should a botocore release
    rename them, the client is refused (EgressDenied) rather than left unchecked."""
    if not policy.restricted:
        return
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    pools = getattr(session, "_pool_classes_by_scheme", None)
    if not isinstance(pools, dict) or not pools:
        raise EgressDenied(what, "this botocore version cannot be held to the egress policy")
    pools.update(urllib3_pool_classes(policy, what, pools))


def guarded_requests_session(policy: EgressPolicy, what: str, **adapter_options: Any) -> Any:
    """A `requests.Session` whose HTTP(S) connections connect only to addresses `policy`
    admits, ignoring proxy settings from the environment (a proxy would connect where the
    policy cannot look). `adapter_options` go to the HTTPAdapter (e.g. `max_retries`)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool

    pools = urllib3_pool_classes(
        policy, what, {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}
    )

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            raise EgressDenied(what, "a proxy cannot be held to the egress policy")

    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(**adapter_options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


__all__ = [
    "ALLOW_NETWORKS_ENV",
    "UNRESTRICTED",
    "Address",
    "EgressDenied",
    "EgressPolicy",
    "Network",
    "address_rule",
    "guard_botocore_client",
    "guarded_requests_session",
    "parse_numeric_host",
    "urllib3_pool_classes",
]
