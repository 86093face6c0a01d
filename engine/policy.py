"""The server's policy over what a job may touch (DESIGN.md, Service principles).

The job JSON is untrusted input: every `Local` path, every host and every size it names is
checked against a `JobPolicy` before it is used. `vipe serve` and `vipe worker` build one from
their flags (`--local-root`, `--allow-network`, `--max-input-pixels`); `vipe run` takes the same
flags but defaults to the operator's own trust (`JobPolicy()`: any local path, any address).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from storage.egress import UNRESTRICTED, EgressPolicy

DEFAULT_MAX_INPUT_PIXELS = 8192 * 4320


@dataclass(frozen=True)
class JobPolicy:
    """`local_roots`: the folders `Local` locations must resolve into (each may hold
    `{tenant}`); None: anywhere. `egress`: where connections may go. `max_input_pixels`: the
    largest source frame accepted (FinalError 3002 beyond)."""

    local_roots: tuple[str, ...] | None = None
    egress: EgressPolicy = UNRESTRICTED
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS

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
