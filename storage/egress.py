"""The egress policy: which network addresses a job may make this process connect to.

(Skeleton: the checks and the connection helpers come with the hardening work.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EgressPolicy:
    """`restricted`: refuse loopback, link-local, private, multicast, unspecified and reserved
    addresses unless one of `allowed` admits them. Unrestricted (the default) is the operator's
    own trust, as `vipe run` has it."""

    restricted: bool = False
    allowed: tuple[Network, ...] = ()


UNRESTRICTED = EgressPolicy()
