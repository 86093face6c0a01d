"""The `vipe` command line.

vipe run job.json        run one job here (exit 0 success, 1 failed, 2 invalid job)
vipe validate job.json   check a job (exit 0 valid, 2 invalid)
vipe demo [DIR]          make a sample source and run a CMAF job on it
vipe certificate         print the certificate that protects secrets in jobs
vipe report FILE         a job report's quality table; --plot PNG draws its rate–quality chart
vipe doctor              what this node can encode and decode (exit 1: it cannot encode H.264)
vipe serve               the HTTPS Encoding API with its job store and worker pool
vipe worker              run jobs from a Celery broker (VIPE_BROKER_URL; see engine.service.cluster)
vipe tenant add NAME     add a tenant and print its new management key (once)
vipe tenant list         list the tenants
vipe tenant remove NAME  remove a tenant
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.chunks import DEFAULT_CHUNK_SECONDS, ChunkSettings
from engine.errors import JobValidationError
from engine.events import EventType
from engine.policy import DEFAULT_MAX_INPUT_PIXELS, TRUSTED, JobPolicy, PolicyError, server_policy

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


_console: Console | None = None


def rich_console() -> Console:
    """rich's stderr Console, imported on first use: rich costs tens of milliseconds of
    start-up that `vipe serve`/`worker` never need and `vipe run` needs only to print."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


class _LazyConsole:
    """`console.print(...)` etc. on `rich_console()`, created at the first call."""

    def __getattr__(self, name: str) -> Any:
        return getattr(rich_console(), name)


console: Any = _LazyConsole()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "command"):
        parser.print_help()
        return EXIT_INVALID
    return args.command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vipe", description="vipe: video encoding engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(title="commands")

    run = commands.add_parser("run", help="run one job on this machine")
    run.add_argument("job", type=Path, help="the job JSON file")
    run.add_argument("--events", type=Path, help="write events as JSON lines to this file")
    run.add_argument("--report", type=Path, help="write the reporting entry to this file")
    run.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
    run.add_argument("--keep-workdir", action="store_true", help="keep the work folder")
    run.add_argument("--data-dir", type=Path, help="data folder (service key)")
    run.add_argument("--strict", action="store_true", help="unknown properties are errors")
    run.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="split the video into chunks on segment boundaries, encoded by N processes and "
        "stitched (jobs shorter than two chunks run in one pass)",
    )
    run.add_argument(
        "--chunk-seconds",
        type=float,
        default=DEFAULT_CHUNK_SECONDS,
        metavar="S",
        help="chunk length with --parallel, rounded to whole segments (default: %(default)s)",
    )
    _add_policy_arguments(run, trusted=True)
    run.set_defaults(command=_run)

    validate = commands.add_parser("validate", help="check a job without running it")
    validate.add_argument("job", type=Path)
    validate.add_argument("--strict", action="store_true", help="unknown properties are errors")
    validate.set_defaults(command=_validate)

    demo = commands.add_parser("demo", help="make a sample source and run a job on it")
    demo.add_argument("folder", type=Path, nargs="?", default=Path("vipe-demo"))
    demo.set_defaults(command=_demo)

    certificate = commands.add_parser(
        "certificate", help="print the base64 certificate clients encrypt secrets with"
    )
    certificate.add_argument("--data-dir", type=Path)
    certificate.set_defaults(command=_certificate)

    doctor = commands.add_parser(
        "doctor", help="probe this node: versions, encoders, GPU, NVENC sessions, NVDEC codecs"
    )
    doctor.add_argument("--json", action="store_true", help="print the probe as JSON")
    doctor.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing, exit status only; skips counting NVENC sessions (health checks)",
    )
    doctor.add_argument(
        "--require-nvenc", action="store_true", help="also exit 1 when NVENC does not work"
    )
    doctor.set_defaults(command=_doctor)
    _add_report_command(commands)
    _add_server_commands(commands)
    return parser


# --------------------------------------------------------------------------------- commands


def _add_policy_arguments(parser: argparse.ArgumentParser, trusted: bool) -> None:
    """The server policy's flags (engine.policy), the same for run, serve and worker."""
    what = "when given, " if trusted else ""
    parser.add_argument(
        "--local-root",
        action="append",
        default=[],
        metavar="DIR",
        help=f"{what}Local locations must lie in one of these folders ({{tenant}}: the "
        "tenant's name); repeatable; VIPE_LOCAL_ROOTS"
        + ("" if trusted else "; none: every Local location is refused"),
    )
    parser.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help=f"{what}connections go to public addresses and these networks only (e.g. an "
        "on-prem MinIO or key service); repeatable; VIPE_ALLOW_NETWORKS",
    )
    parser.add_argument(
        "--max-input-pixels",
        type=int,
        default=DEFAULT_MAX_INPUT_PIXELS,
        help="largest source frame accepted, in pixels (default 8192x4320); FinalError 3002",
    )


def _policy(args: argparse.Namespace, trusted: bool) -> JobPolicy | None:
    """The policy from the flags, or None after printing why it cannot be had."""
    from engine.config import data_dir

    keys_dir = getattr(args, "keys_dir", None)  # a worker's copy of the API's keys
    try:
        return server_policy(
            args.local_root,
            args.allow_network,
            args.max_input_pixels,
            data_dir=data_dir(args.data_dir),
            trusted=trusted,
            also_private=[keys_dir] if keys_dir else [],
        )
    except PolicyError as error:
        console.print(f"[red]error[/red]: {error}", highlight=False)
        return None


def _validate(args) -> int:
    from engine.validation import check_job, load_job_json

    try:
        checked = check_job(load_job_json(args.job), strict=args.strict)
    except JobValidationError as error:
        _print_problems(error.errors, "error")
        return EXIT_INVALID
    _print_problems(checked.warnings, "warning")
    if not checked.valid:
        _print_problems(checked.errors, "error")
        return EXIT_INVALID
    console.print(f"[green]valid[/green]: {args.job}")
    return EXIT_OK


def _print_problems(problems, kind: str) -> None:
    for problem in problems:
        colour = "red" if kind == "error" else "yellow"
        console.print(
            f"[{colour}]{kind}[/{colour}] {problem.field}: {problem.message}", highlight=False
        )


def _run(args) -> int:
    policy = _policy(args, trusted=True)
    if policy is None:
        return EXIT_INVALID
    return run_job_file(
        args.job,
        policy=policy,
        events_file=args.events,
        report_file=args.report,
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
        data_dir=args.data_dir,
        strict=args.strict,
        chunking=_chunking(args.parallel, args.chunk_seconds),
    )


def _chunking(workers: int | None, seconds: float) -> ChunkSettings | None:
    """`--parallel N [--chunk-seconds S]` as the run's chunk settings (None: one pass)."""
    if not workers:
        return None
    return ChunkSettings(workers=max(1, workers), seconds=max(seconds, 0.001))


def run_job_file(
    job: Path,
    *,
    events_file: Path | None = None,
    report_file: Path | None = None,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    data_dir: Path | None = None,
    strict: bool = False,
    policy: JobPolicy = TRUSTED,
    chunking: ChunkSettings | None = None,
) -> int:
    from engine.cancel import CancelToken
    from engine.pipeline import run_job

    token = CancelToken()
    # Ctrl-C, and a service manager or container runtime stopping the process (SIGTERM): the
    # job ends with 5001 and leaves no partial output, instead of dying mid-publish.
    handlers = {
        number: signal.signal(number, lambda *_, why=why: token.cancel(f"cancelled by {why}"))
        for number, why in ((signal.SIGINT, "Ctrl-C (SIGINT)"), (signal.SIGTERM, "SIGTERM"))
    }
    events_out = open(events_file, "w", encoding="utf-8") if events_file else None  # noqa: SIM115
    display = _Display()
    try:

        def on_event(event: dict[str, Any]) -> None:
            if events_out:
                events_out.write(json.dumps(event) + "\n")
                events_out.flush()
            display.show(event)

        with display:
            report = run_job(
                job,
                on_event=on_event,
                cancel=token,
                workdir=workdir,
                keep_workdir=keep_workdir,
                data_dir=data_dir,
                strict=strict,
                policy=policy,
                chunking=chunking,
            )
    except JobValidationError as error:
        _print_problems(error.errors, "error")
        return EXIT_INVALID
    finally:
        for number, previous in handlers.items():
            signal.signal(number, previous)
        if events_out:
            events_out.close()
    if report_file:
        report_file.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_report(report)
    if not report["Success"]:
        console.print(
            f"[red]FinalError {report.get('ErrorCode')}[/red]: {display.final_error}",
            highlight=False,
        )
        return EXIT_FAILED
    return EXIT_OK


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="reporting entry", show_header=False)
    for key, value in report.items():
        table.add_row(key, str(value))
    console.print(table)


class _Display:
    """A progress bar per phase on a terminal; plain lines otherwise."""

    PROGRESS = {
        EventType.ACQUISITION_PROGRESS: "acquisition",
        EventType.ENCODING_PROGRESS: "encoding",
        EventType.PUBLISHING_PROGRESS: "publishing",
    }

    def __init__(self) -> None:
        # The bars only on a terminal: rich.progress costs tens of milliseconds to import.
        self.progress = _progress_bars() if console.is_terminal else None
        self.tasks: dict[str, TaskID] = {}
        self.final_error = ""

    def __enter__(self) -> _Display:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def show(self, event: dict[str, Any]) -> None:
        kind = event["MessageType"]
        if kind == EventType.FINAL_ERROR:
            self.final_error = f"{event['ErrorMessage']} (phase {event['Phase']})"
        if kind in self.PROGRESS:
            name = self.PROGRESS[kind]
            if self.progress is not None:
                if name not in self.tasks:
                    self.tasks[name] = self.progress.add_task(name, total=100)
                self.progress.update(self.tasks[name], completed=event["Progress"])
            return
        detail = {
            k: v
            for k, v in event.items()
            if k in ("Code", "Message", "ErrorCode", "ErrorMessage", "Location")
        }
        line = f"{event['Timestamp']} {kind}" + (f" {detail}" if detail else "")
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
        else:
            console.print(line, highlight=False)


def _progress_bars() -> Progress:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=rich_console(),
    )


def _demo(args) -> int:
    from engine.demo import make_demo

    job = make_demo(args.folder)
    console.print(f"sample source and job written to {args.folder}/; running {job}")
    code = run_job_file(
        job, events_file=args.folder / "events.jsonl", report_file=args.folder / "report.json"
    )
    if code == EXIT_OK:
        console.print(f"[green]done[/green]: the package is in {args.folder.resolve() / 'out'}")
    return code


def _add_report_command(commands) -> None:
    report = commands.add_parser(
        "report", help="quality table of a job report (QualityMetrics), or its chart"
    )
    report.add_argument("report", type=Path, help="the reporting entry (vipe run --report FILE)")
    report.add_argument(
        "--plot", type=Path, metavar="PNG", help="draw bitrate vs PSNR/SSIM/VMAF into this PNG"
    )
    report.set_defaults(command=_report)


def _report(args) -> int:
    """`vipe report`: the rungs' metrics as a table, or a rate–quality chart with --plot."""
    from rich.console import Console
    from rich.table import Table

    from engine.quality import plot_rate_quality, quality_rows

    try:
        entry = json.loads(args.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        console.print(f"[red]error[/red]: {args.report}: {error}", highlight=False)
        return EXIT_INVALID
    rows = quality_rows(entry) if isinstance(entry, dict) else []
    if not rows:
        console.print(
            f"[red]error[/red]: {args.report} has no QualityMetrics "
            "(run the job with ContentProcessing.QualityMetrics: true)",
            highlight=False,
        )
        return EXIT_FAILED
    if args.plot:
        try:
            points = plot_rate_quality(entry, args.plot)
        except RuntimeError as error:
            console.print(f"[red]error[/red]: {error}", highlight=False)
            return EXIT_FAILED
        console.print(f"{len(points)} points ({len(rows)} renditions) drawn into {args.plot}")
        return EXIT_OK
    table = Table(title=f"quality of {entry.get('ExternalId') or entry.get('JobId') or 'the job'}")
    columns = ("rendition", "size", "kbps", "encoded kbps", "PSNR Y", "PSNR", "SSIM", "VMAF")
    for column in (*columns, "frames"):
        table.add_column(column, justify="left" if column == "rendition" else "right")

    def number(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        step = row.get("QualityFrameStep") or 1
        table.add_row(
            str(row.get("Name")),
            f"{row.get('Width')}×{row.get('Height')}",
            str(row.get("BitrateInKbps")),
            number(row.get("EncodedBitrateInKbps"), 1),
            number(row.get("PsnrY"), 2),
            number(row.get("Psnr"), 2),
            number(row.get("Ssim"), 4),
            number(row.get("Vmaf"), 2),
            f"{row.get('QualityFrames')}" + (f" (every {step})" if step > 1 else ""),
        )
    out = Console()
    if not out.is_terminal:  # piped or redirected: full names rather than 80 columns
        out = Console(width=200)
    out.print(table)
    return EXIT_OK


def _certificate(args) -> int:
    from drm.credentials import ServiceKey
    from engine.config import data_dir

    print(ServiceKey.load_or_create(data_dir(args.data_dir)).certificate_base64)
    return EXIT_OK


def _doctor(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from engine.capabilities import probe
    from engine.encoders import CPU_ENCODERS, NVENC_ENCODERS

    # A health check runs often, next to running jobs: it must not take their NVENC sessions.
    node = probe(count_sessions=not args.quiet, refresh=args.quiet)
    healthy = node.can_encode_h264 and (
        not args.require_nvenc or bool(node.capabilities.nvenc_encoders)
    )
    if args.quiet:
        return EXIT_OK if healthy else EXIT_FAILED
    out = Console()
    if args.json:
        out.print_json(json.dumps(node.as_json()))
        return EXIT_OK if healthy else EXIT_FAILED
    caps = node.capabilities
    summary = Table(title="vipe doctor", show_header=False)
    summary.add_row("PyAV", node.pyav_version)
    summary.add_row("FFmpeg", node.ffmpeg_version)
    summary.add_row("libraries", ", ".join(f"{k} {v}" for k, v in node.libraries.items()))
    summary.add_row("encoders built in", ", ".join(node.encoders_built))
    summary.add_row("hardware devices built in", ", ".join(node.hw_devices) or "none")
    for gpu in node.gpus:
        memory = f", {gpu.memory_mib} MiB" if gpu.memory_mib else ""
        summary.add_row(
            f"GPU {gpu.index}", f"{gpu.name}, driver {gpu.driver or '?'}{memory} ({gpu.source})"
        )
    if not node.gpus:
        summary.add_row("GPU", "none found (no NVML, no nvidia-smi)")
    summary.add_row("CUDA", node.cuda.detail)
    summary.add_row("NVENC sessions at once", str(caps.nvenc_sessions))
    summary.add_row("probe time", f"{node.seconds:.2f} s")
    for note in node.notes:
        summary.add_row("note", note)
    out.print(summary)
    checks = Table(title="what was tried")
    for column in ("kind", "name", "works", "detail"):
        checks.add_column(column)
    for kind, items in (
        ("CPU encoder", node.cpu_checks),
        ("NVENC", node.nvenc_checks),
        ("NVDEC", node.nvdec_checks),
    ):
        for check in items:
            mark = "[green]yes[/green]" if check.ok else "[red]no[/red]"
            checks.add_row(kind, check.name, mark, check.detail)
    out.print(checks)
    for codec in ("H264", "H265"):
        ways = [n for n in (NVENC_ENCODERS[codec],) if n in caps.nvenc_encoders]
        ways += [n for n in (CPU_ENCODERS[codec],) if n in caps.cpu_encoders]
        out.print(f"{codec}: {', '.join(ways) if ways else '[red]no encoder[/red]'}")
    decode = ", ".join(sorted(caps.nvdec_codecs)) or "none (CPU decoding)"
    out.print(f"NVDEC decodes: {decode}")
    if not node.can_encode_h264:
        out.print("[red]this node cannot encode H.264 at all[/red]")
    elif args.require_nvenc and not caps.nvenc_encoders:
        out.print(f"[red]NVENC required: {caps.no_nvenc_reason()}[/red]")
    return EXIT_OK if healthy else EXIT_FAILED


# ------------------------------------------------------------------- server and tenants


def _add_server_commands(commands) -> None:
    serve = commands.add_parser("serve", help="run the HTTPS Encoding API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--data-dir", type=Path, help="data folder (default: VIPE_DATA_DIR)")
    serve.add_argument("--workers", type=int, default=1, help="job runners in this process")
    serve.add_argument("--strict", action="store_true", help="unknown properties are errors")
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument("--jwks-url", help="JWKS URL of the identity provider")
    keys.add_argument("--jwt-public-key", type=Path, help="PEM public key that signs tokens")
    serve.add_argument("--jwt-issuer", help="required `iss` of tokens")
    serve.add_argument("--jwt-audience", help="required `aud` of tokens")
    serve.add_argument("--jwt-permission", default="Videos: Encode")
    serve.add_argument("--jwt-permission-claim", default="permissions")
    serve.add_argument("--jwt-tenant-claim", default="tenantId")
    serve.add_argument("--cert", type=Path, help="TLS certificate (PEM); default self-signed")
    serve.add_argument("--key", type=Path, help="TLS private key (PEM)")
    serve.add_argument("--max-body", type=int, default=1024 * 1024, help="request body limit")
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=10.0,
        help="at stop, how long running jobs may finish before they are queued again",
    )
    serve.add_argument(
        "--lease-seconds",
        type=float,
        default=60.0,
        help="a running job whose heartbeat is older than this is taken over",
    )
    serve.add_argument(
        "--max-attempts", type=int, default=3, help="starts of a job before it fails (5000)"
    )
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument(
        "--gpu-wait-seconds",
        type=float,
        default=float(os.environ.get("VIPE_GPU_WAIT_SECONDS") or 0),
        help="with VIPE_BROKER_URL: an Nvidia job fails (3102) after waiting this long while "
        "no GPU worker is alive (0: it waits)",
    )
    serve.add_argument(
        "--max-queued-per-tenant",
        type=int,
        default=100,
        help="jobs a tenant may have queued (429 with Retry-After beyond)",
    )
    serve.add_argument(
        "--max-running-per-tenant", type=int, default=4, help="jobs of one tenant run at once"
    )
    serve.add_argument(
        "--key-service-deadline",
        type=float,
        default=15.0,
        help="seconds POST /Job waits for a Key Service in all (503 beyond)",
    )
    serve.add_argument(
        "--chunk-workers",
        type=int,
        default=int(os.environ.get("VIPE_CHUNK_WORKERS") or 0),
        metavar="N",
        help="encode each job's video in chunks by N processes of this node, as `vipe run "
        "--parallel N` (default: VIPE_CHUNK_WORKERS, else one pass)",
    )
    _add_chunk_seconds(serve)
    _add_policy_arguments(serve, trusted=False)
    serve.set_defaults(command=_serve)
    _add_worker_command(commands)

    tenant = commands.add_parser("tenant", help="manage tenants and their management keys")
    tenant.add_argument("--data-dir", type=Path)
    actions = tenant.add_subparsers(title="actions", required=True)
    add = actions.add_parser("add", help="add a tenant; prints its management key once")
    add.add_argument("name")
    add.set_defaults(command=_tenant_add)
    listing = actions.add_parser("list", help="list the tenants")
    listing.set_defaults(command=_tenant_list)
    remove = actions.add_parser("remove", help="remove a tenant")
    remove.add_argument("name")
    remove.set_defaults(command=_tenant_remove)
    for action in (add, listing, remove):  # `vipe tenant add NAME --data-dir DIR` works too
        action.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)


def _serve(args) -> int:
    from engine.config import data_dir
    from engine.service.api import ServerSettings, serve
    from engine.service.auth import AuthSettings

    if bool(args.cert) != bool(args.key):
        console.print("[red]error[/red]: --cert and --key go together")
        return EXIT_INVALID
    if not args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    policy = _policy(args, trusted=False)
    if policy is None:
        return EXIT_INVALID
    auth = AuthSettings(
        jwks_url=args.jwks_url,
        jwt_public_key=args.jwt_public_key,
        issuer=args.jwt_issuer,
        audience=args.jwt_audience,
        permission=args.jwt_permission,
        permission_claim=args.jwt_permission_claim,
        tenant_claim=args.jwt_tenant_claim,
    )
    if args.log_format == "json":  # one JSON object per line, with the job id
        from engine.service.cluster import configure_logging

        configure_logging("json", logging.DEBUG if args.verbose else logging.INFO)
    queue_factory = None
    broker = os.environ.get("VIPE_BROKER_URL")
    if broker:  # a cluster: this process stores and enqueues; `vipe worker`s run the jobs

        def queue_factory(service):
            from engine.service.cluster import CeleryQueue

            return CeleryQueue(service, broker, gpu_wait_seconds=args.gpu_wait_seconds)

    serve(
        ServerSettings(
            data_dir=data_dir(args.data_dir),
            host=args.host,
            port=args.port,
            workers=0 if broker else args.workers,
            strict=args.strict,
            auth=auth,
            max_body=args.max_body,
            drain_seconds=args.drain_seconds,
            certificate=args.cert,
            key=args.key,
            lease_seconds=args.lease_seconds,
            max_attempts=args.max_attempts,
            queue_factory=queue_factory,
            policy=policy,
            max_queued_per_tenant=args.max_queued_per_tenant,
            max_running_per_tenant=args.max_running_per_tenant,
            key_service_deadline=args.key_service_deadline,
            chunking=_chunking(args.chunk_workers, args.chunk_seconds),
        )
    )
    return EXIT_OK


def _add_chunk_seconds(parser) -> None:
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=float(os.environ.get("VIPE_CHUNK_SECONDS") or DEFAULT_CHUNK_SECONDS),
        help="chunk length, rounded to whole segments (default: VIPE_CHUNK_SECONDS, else "
        "%(default)s)",
    )


def _add_worker_command(commands) -> None:
    worker = commands.add_parser(
        "worker", help="run jobs from the Celery broker (VIPE_BROKER_URL, VIPE_DATABASE_URL)"
    )
    worker.add_argument("--broker", help="broker URL (default: VIPE_BROKER_URL)")
    worker.add_argument(
        "--queues", help="gpu, cpu or gpu,cpu (default: gpu,cpu with NVENC here, else cpu)"
    )
    worker.add_argument("--concurrency", type=int, default=1, help="jobs at once")
    worker.add_argument(
        "--burst", action="store_true", help="exit when the queues are empty and nothing runs"
    )
    worker.add_argument("--data-dir", type=Path, help="work folders (default: VIPE_DATA_DIR)")
    worker.add_argument(
        "--keys-dir",
        type=Path,
        help="the API's data folder (store key, service key) if not the data folder",
    )
    worker.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="at SIGTERM, how long running jobs may finish before they are handed back",
    )
    worker.add_argument("--lease-seconds", type=float, default=60.0, help="job lease")
    worker.add_argument(
        "--max-attempts", type=int, default=3, help="starts of a job before it fails (5000)"
    )
    worker.add_argument("--log-format", choices=("text", "json"), default="text")
    worker.add_argument("--strict", action="store_true", help="unknown properties are errors")
    worker.add_argument(
        "--work-storage",
        default=os.environ.get("VIPE_WORK_STORAGE") or None,
        metavar="URI",
        help="storage every worker shares for chunk files (file:///shared/dir, s3://bucket/dir, "
        "Provider:URI; default: VIPE_WORK_STORAGE): jobs are split into chunks that any "
        "worker of the job's queue encodes (engine.service.cluster.chunks)",
    )
    _add_chunk_seconds(worker)
    _add_policy_arguments(worker, trusted=False)
    worker.set_defaults(command=_worker)


def _worker(args) -> int:
    from engine.config import data_dir
    from engine.service.cluster import WorkerSettings, broker_url, configure_logging, run_worker

    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    broker = broker_url(args.broker)
    if not broker:
        console.print("[red]error[/red]: no broker: set VIPE_BROKER_URL or give --broker")
        return EXIT_INVALID
    if args.concurrency < 1:
        console.print("[red]error[/red]: --concurrency must be at least 1")
        return EXIT_INVALID
    policy = _policy(args, trusted=False)
    if policy is None:
        return EXIT_INVALID
    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip()) if args.queues else None
    work_storage = None
    if args.work_storage:
        from engine.service.cluster.chunks import work_storage_location
        from storage import StorageError

        try:
            work_storage = work_storage_location(args.work_storage)
        except StorageError as error:
            console.print(f"[red]error[/red]: --work-storage: {error}", highlight=False)
            return EXIT_INVALID
    try:
        import celery  # noqa: F401
    except ImportError:
        console.print("[red]error[/red]: vipe worker needs `pip install vipe[cluster]`")
        return EXIT_FAILED
    return run_worker(
        WorkerSettings(
            data_dir=data_dir(args.data_dir),
            broker=broker,
            queues=queues,
            concurrency=args.concurrency,
            burst=args.burst,
            grace_seconds=args.grace_seconds,
            lease_seconds=args.lease_seconds,
            max_attempts=args.max_attempts,
            keys_dir=args.keys_dir,
            strict=args.strict,
            log_format=args.log_format,
            policy=policy,
            work_storage=work_storage,
            chunk_seconds=max(args.chunk_seconds, 0.001),
        )
    )


def _tenant_add(args) -> int:
    from engine.config import data_dir
    from engine.service.tenants import TenantError, TenantRegistry

    try:
        key = TenantRegistry(data_dir(args.data_dir)).add(args.name)
    except TenantError as error:
        console.print(f"[red]error[/red]: {error}", highlight=False)
        return EXIT_FAILED
    console.print(f"tenant {args.name} added; its management key (shown only now):")
    print(key)
    return EXIT_OK


def _tenant_list(args) -> int:
    from engine.config import data_dir
    from engine.service.tenants import TenantRegistry

    for tenant in TenantRegistry(data_dir(args.data_dir)).list():
        print(f"{tenant.name}\t{tenant.created}")
    return EXIT_OK


def _tenant_remove(args) -> int:
    from engine.config import data_dir
    from engine.service.tenants import TenantError, TenantRegistry

    try:
        TenantRegistry(data_dir(args.data_dir)).remove(args.name)
    except TenantError as error:
        console.print(f"[red]error[/red]: {error}", highlight=False)
        return EXIT_FAILED
    console.print(f"tenant {args.name} removed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
