"""The server's policy over what a job may touch (DESIGN.md, Service principles).

The job JSON is untrusted input: every `Local` path, every host and every size it names is
checked against a `JobPolicy` before it is used. `vipe serve` and `vipe worker` build one from
their flags (`--local-root`, `--allow-network`, `--max-input-pixels`); `vipe run` takes the same
flags but defaults to the operator's own trust (`JobPolicy()`: any local path, any address).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from storage.egress import ALLOW_NETWORKS_ENV, UNRESTRICTED, EgressPolicy

DEFAULT_MAX_INPUT_PIXELS = 8192 * 4320
LOCAL_ROOTS_ENV = "VIPE_LOCAL_ROOTS"  # several separated by os.pathsep (":")


@dataclass(frozen=True)
class JobPolicy:
    """`local_roots`: the folders `Local` locations must resolve into (each may hold
    `{tenant}`); None: anywhere. `egress`: where connections may go. `max_input_pixels`: the
    largest source frame accepted (FinalError 3002 beyond)."""

    local_roots: tuple[str, ...] | None = None
    egress: EgressPolicy = UNRESTRICTED
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    # Folders no Local location may reach even inside a root: the server's data folder.
    excluded: tuple[Path, ...] = ()

    def roots_for(self, tenant_id: str) -> tuple[Path, ...] | None:
        """The tenant's own roots (`{tenant}` replaced), resolved; None when unrestricted."""
        if self.local_roots is None:
            return None
        return tuple(
            Path(root.replace("{tenant}", tenant_id)).resolve() for root in self.local_roots
        )

    def with_egress(self, egress: EgressPolicy) -> JobPolicy:
        return replace(self, egress=egress)


TRUSTED = JobPolicy()


class PolicyError(ValueError):
    """A policy setting that cannot be honoured (a bad CIDR, a size below one pixel)."""


def server_policy(
    local_roots: Sequence[str],
    allow_networks: Sequence[str],
    max_input_pixels: int,
    *,
    data_dir: Path,
    trusted: bool,
    also_private: Sequence[Path] = (),
) -> JobPolicy:
    """The policy from `--local-root`, `--allow-network`, `--max-input-pixels` and their
    environment variables (VIPE_LOCAL_ROOTS, VIPE_ALLOW_NETWORKS).

    `trusted` (`vipe run`): what is not given stays open (any local path, any address);
    `--local-root` confines and `--allow-network` restricts egress when given. Otherwise
    (`vipe serve`, `vipe worker`): no root means every `Local` location is refused, and egress
    is restricted to public addresses plus the allowed networks. The data folder (keys,
    tenants, the store) is never reachable through a Local location, even inside a root, and
    neither are `also_private` folders (a worker's `--keys-dir`).
    """
    roots = [*local_roots, *_env_list(LOCAL_ROOTS_ENV, os.pathsep)]
    networks = [*allow_networks, *_env_list(ALLOW_NETWORKS_ENV, ",")]
    try:
        egress = EgressPolicy.from_cidrs(networks) if networks or not trusted else UNRESTRICTED
    except ValueError as error:
        raise PolicyError(str(error)) from None
    if max_input_pixels < 1:
        raise PolicyError("--max-input-pixels must be at least 1")
    return JobPolicy(
        local_roots=tuple(roots) if roots or not trusted else None,
        egress=egress,
        max_input_pixels=max_input_pixels,
        excluded=() if trusted else tuple(p.resolve() for p in (data_dir, *also_private)),
    )


def _env_list(name: str, separator: str) -> list[str]:
    return [item for item in os.environ.get(name, "").split(separator) if item.strip()]
