"""The server's policy over Local locations, through a real `vipe serve` (HTTPS, a process):
no root refuses every Local location; `--local-root DIR/{tenant}` confines each tenant to its
own subtree; a symlink inside a root that points outside is refused; the data folder is never
reachable; refusals name the field and nothing outside the root. Also `vipe run`'s and the
engine's side: DeleteFilesFromSourceWhenDone deletes only the files the job used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from api_helpers import REPO, ServeProcess, api_client, free_port, tiny_job, wait_final
from mediagen import make_media

from engine.pipeline import run_job
from engine.service.tenants import TenantRegistry


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    from api_helpers import TokenIssuer

    return TokenIssuer(tmp_path_factory.mktemp("jwt"))


def serve(data: Path, issuer, *args: str) -> ServeProcess:
    """`vipe serve` with only the given policy flags (no --local-root from the helper)."""
    process = ServeProcess(data, free_port(), issuer.public_pem)
    at = process.args.index("--local-root")
    del process.args[at : at + 2]  # the helper's own root, for the other tests
    process.args += list(args)
    return process.start()


def clip(folder: Path) -> Path:
    make_media(folder / "clip.mp4", duration=1, width=160, height=90)
    return folder


def test_without_a_root_every_local_location_is_refused(tmp_path, issuer):
    data = tmp_path / "data"
    data.mkdir()
    key = TenantRegistry(data).add("acme")
    server = serve(data, issuer)
    try:
        with api_client(server.url, server.cert, f"Tenant-Auth {key}") as client:
            answer = client.post("/Job", json=tiny_job(clip(tmp_path / "in"), tmp_path / "out"))
        assert answer.status_code == 400, answer.text
        fields = {e["Field"] for e in answer.json()["Errors"]}
        assert fields == {"ContentAcquisition.UriPath", "ContentPublishing.UriPath"}
    finally:
        server.stop()


def test_tenants_are_confined_to_their_own_root(tmp_path, issuer):
    data = tmp_path / "data"
    data.mkdir()
    root = tmp_path / "media"
    acme_key = TenantRegistry(data).add("acme")
    TenantRegistry(data).add("globex")
    acme_in = clip(root / "acme" / "in")
    globex_in = clip(root / "globex" / "in")
    (globex_in / "secret-plan.txt").write_text("globex only")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("not for tenants")
    (root / "acme" / "escape").symlink_to(outside)  # a link inside acme's root, out of it
    (root / "acme" / "data").symlink_to(data)
    server = serve(data, issuer, "--local-root", str(root / "{tenant}"))
    try:
        with api_client(server.url, server.cert, f"Tenant-Auth {acme_key}") as client:
            acme = root / "acme"
            attempts = {
                "another tenant's input": tiny_job(globex_in, acme / "out"),
                "another tenant's output": tiny_job(acme_in, root / "globex" / "out"),
                "outside every root": tiny_job(outside, acme / "out"),
                "a .. escape": tiny_job(acme / ".." / "globex" / "in", acme / "out"),
                "a symlink out of the root": tiny_job(acme / "escape", acme / "out"),
                "the data folder": tiny_job(acme / "data", acme / "out"),
            }
            for what, job in attempts.items():
                answer = client.post("/Job", json=job)
                assert answer.status_code == 400, (what, answer.text)
                for leaked in ("secret-plan", "private.txt", "tenants.json", "vipe.db"):
                    assert leaked not in answer.text, (what, answer.text)
            # its own subtree works, end to end
            job = tiny_job(acme_in, root / "acme" / "out")
            view = wait_final(client, client.post("/Job", json=job).json()["JobId"], 60)
        assert view["State"] == "Succeeded", view.get("ErrorMessage")
        assert (root / "acme" / "out" / "manifest.mpd").exists()
        assert not (root / "globex" / "out").exists()
    finally:
        server.stop()


def test_delete_files_from_source_keeps_what_the_job_ignored(tmp_path):
    source = clip(tmp_path / "in")
    (source / "notes.txt").write_text("not media: ignored by the mapping")
    job = tiny_job(source, tmp_path / "out", DeleteFilesFromSourceWhenDone=True)
    events: list[dict] = []
    report = run_job(job, on_event=events.append, data_dir=tmp_path / "data")
    assert report["Success"], events[-1]
    assert sorted(p.name for p in source.iterdir()) == ["notes.txt"]


def test_tenant_options_may_follow_the_action(tmp_path):
    data = tmp_path / "data"
    command = [sys.executable, "-m", "engine.cli", "tenant", "add", "acme", "--data-dir", str(data)]
    added = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert added.returncode == 0, added.stderr
    assert [t.name for t in TenantRegistry(data).list()] == ["acme"]
    listed = subprocess.run(
        [sys.executable, "-m", "engine.cli", "tenant", "list", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert listed.stdout.startswith("acme\t"), listed.stdout
