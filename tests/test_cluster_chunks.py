"""The farm encodes one job in chunks (issue 17): `vipe worker --work-storage URI
--chunk-seconds S` on the machine's RabbitMQ and PostgreSQL, a shared folder as work storage.

- one job of four chunks on two workers uses both (the report's ChunkDetails names both), and
  its package has the source's frame count in every rung;
- cancel: 5001 within 5 s, no chunk left running, nothing published, the work folder removed;
- `kill -9` of the worker that encodes a chunk (not the coordinator): the chunk runs again
  elsewhere (a second attempt), the job succeeds with the source's frame count per rung.
"""

from __future__ import annotations

import datetime
import os
import pickle
import re
import shutil
import time
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from api_helpers import TokenIssuer, job_state, wait_final, wait_for
from cluster_helpers import (
    Cluster,
    encodes,
    postgres_schema,
    quick_job,
    rabbitmq_broker,
    redis_broker,
)
from e2e_helpers import count_frames, read_dash, segment_frames
from mediagen import make_media
from PIL import Image

from engine import cli
from engine.chunks import Chunk
from engine.service.cluster.chunks import (
    ChunkContext,
    ChunkRow,
    ChunkStore,
    _portable,
    end_job,
    plan_fingerprint,
    work_storage_location,
)
from engine.service.owners import new_owner
from engine.service.store import JobSealer, NewJob, Store
from engine.stitch import ChunkTask
from engine.watermark import Watermarker, WatermarkSpec

LEASE = 30.0  # long: a killed worker's chunk is taken over because its process is gone
SHORT_LEASE = 4.0  # a farm whose dead coordinator's job is taken over quickly
CHUNK_SECONDS = 6
STARTED = re.compile(r"chunk \d+ started on ")
ENDED = re.compile(r"chunk \d+ (done|stopped|failed)")


@pytest.fixture(scope="module")
def sources(media_dir) -> dict[str, Path]:
    """`four`: 24 s of 160x90 (four 6 s chunks, quick); `heavy`: 24 s of 640x360 (four
    chunks of seconds of encoding each, so that a worker can be killed in the middle of one:
    a 320x180 chunk took 0.7 s here, too short to land in reliably)."""
    folders = {"four": media_dir / "chunks-four", "heavy": media_dir / "chunks-heavy"}
    for name, seconds, width, height in (("four", 24, 160, 90), ("heavy", 24, 640, 360)):
        clip = folders[name] / "clip.mp4"
        if not clip.exists():
            make_media(clip, duration=seconds, width=width, height=height, audio=[])
    return folders


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-chunks")
    issuer = TokenIssuer(root)
    with (
        postgres_schema() as database,
        rabbitmq_broker() as broker,
        Cluster(root, broker, database, issuer, lease=LEASE, attempts=3) as cluster,
    ):
        yield cluster


@pytest.fixture(scope="module")
def workers(cluster):
    """Two workers sharing a folder as work storage, 6 s chunks (three 2 s segments)."""
    work = (cluster.root / "work").as_uri()
    return [
        cluster.worker(name, "--work-storage", work, "--chunk-seconds", str(CHUNK_SECONDS))
        for name in ("w1", "w2")
    ]


def chunk_job(source: Path, output: Path, *, heavy: bool = False) -> dict:
    if not heavy:
        return quick_job(source, output, SegmentLengthInSeconds=2)
    return quick_job(
        source,
        output,
        SegmentLengthInSeconds=2,
        OptimizeFor="Quality",
        VideoRepresentations=[
            {"Width": 640, "Height": 360, "BitrateInKbps": 800},
            {"Width": 320, "Height": 180, "BitrateInKbps": 300},
        ],
    )


def rung_frames(output: Path) -> dict[str, int]:
    _, tracks = read_dash(output / "manifest.mpd")
    return {
        t.name: sum(frames for frames, _ in segment_frames(t)) for t in tracks if t.kind == "video"
    }


def chunk_rows(cluster: Cluster, job_id: str) -> list[ChunkRow]:
    return ChunkStore(cluster.store, LEASE, 3).rows(job_id)


def work_folder_empty(cluster: Cluster) -> bool:
    folder = cluster.root / "work"
    return not folder.exists() or not any(folder.iterdir())


def test_work_storage_uris():
    assert work_storage_location("file:///srv/work").provider == "Local"
    assert work_storage_location("/srv/work").uri == "file:///srv/work/"
    assert work_storage_location("s3://bucket/work").provider == "AmazonS3"
    location = work_storage_location("S3Compatible:http://127.0.0.1:9000/bucket/work")
    assert (location.provider, location.uri) == (
        "S3Compatible",
        "http://127.0.0.1:9000/bucket/work/",
    )
    azure = work_storage_location("https://acct.blob.core.windows.net/c/work")
    assert azure.provider == "AzureBlob"


def test_worker_refuses_an_unknown_work_storage(tmp_path):
    arguments = ["worker", "--broker", "amqp://127.0.0.1:1//", "--data-dir", str(tmp_path)]
    assert cli.main([*arguments, "--work-storage", "nowhere"]) == cli.EXIT_INVALID


@pytest.fixture
def stored_job(tmp_path):
    """A fresh SQLite store holding one job: (store, job_id)."""
    store = Store(f"sqlite:///{tmp_path / 'vipe.db'}", JobSealer(os.urandom(32)))
    store.migrate()
    try:
        job_id = str(uuid.uuid4())
        store.create_job(NewJob(job_id, "t", ("e", "t", "p"), {}, {}, [], {"JobId": job_id}))
        yield store, job_id
    finally:
        store.close()


def test_chunk_claims_in_the_store(stored_job):
    """Claims are exclusive; a chunk of a live owner is not taken, one of a dead process of
    this host is (an attempt each), and the attempts are bounded; stop ends the rest."""
    store, job_id = stored_job
    chunks = ChunkStore(store, lease_seconds=60, max_attempts=2)
    chunks.reset(job_id, 2)
    me = new_owner()
    host = me.split(":")[0]
    other = f"{host}:{os.getppid()}:parent"  # another live process of this host
    dead = f"{host}:999999999:gone"  # a pid of this host that does not run
    assert chunks.claim(job_id, 0, me) is not None
    assert chunks.claim(job_id, 0, other) is None  # held by a live owner
    assert chunks.heartbeat(job_id, 0, me, 0.5)
    assert not chunks.heartbeat(job_id, 0, other, 0.5)
    assert chunks.finish(job_id, 0, me, {"Frames": 1})
    assert chunks.claim(job_id, 0, other) is None  # done
    assert chunks.claim(job_id, 1, dead) is not None  # first attempt, then the worker dies
    assert chunks.claim(job_id, 1, me) is not None  # taken over: second attempt
    assert not chunks.heartbeat(job_id, 1, dead, 0.1)  # the old owner lost it
    with store.writing() as session:  # this owner dies too
        session.get(ChunkRow, (job_id, 1)).owner = dead
    assert chunks.claim(job_id, 1, other) is None  # two attempts used: Failed
    rows = chunks.rows(job_id)
    assert [r.state for r in rows] == ["Done", "Failed"]
    assert "stopped 2 times" in rows[1].error
    chunks.reset(job_id, 2)  # another plan (or none): its chunks afresh
    assert chunks.claim(job_id, 0, me) is not None
    chunks.stop(job_id)
    assert [r.state for r in chunks.rows(job_id)] == ["Cancelled", "Cancelled"]
    assert not chunks.heartbeat(job_id, 0, me, 0.9)  # its encoder stops


def test_a_job_that_runs_again_keeps_the_done_chunks_of_its_plan(stored_job, tmp_path):
    """`resume`: the rows of the same plan keep their Done chunks (and Running ones, for the
    take-over rules), the rest Pending again; another plan keeps nothing. When the job has
    ended, its rows are listed for the folder's removal until they forget their plan."""
    store, job_id = stored_job
    chunks = ChunkStore(store, lease_seconds=60, max_attempts=3)
    me, dead = new_owner(), f"{new_owner().split(':')[0]}:999999999:gone"
    assert chunks.resume(job_id, 4, "plan-a") is None  # nothing stored yet
    chunks.reset(job_id, 4, "plan-a")
    assert chunks.claim(job_id, 0, dead) is not None
    assert chunks.finish(job_id, 0, dead, {"Frames": 1})
    assert chunks.claim(job_id, 1, dead) is not None  # Running when its worker died
    assert chunks.claim(job_id, 2, dead) is not None
    chunks.fail(job_id, 2, dead, "failed")
    assert chunks.resume(job_id, 4, "plan-a") == {0}
    rows = chunks.rows(job_id)
    assert [r.state for r in rows] == ["Done", "Running", "Pending", "Pending"]
    assert rows[0].owner == dead and rows[0].attempts == 1  # kept as it was
    assert chunks.claim(job_id, 0, me) is None  # Done stays Done
    assert chunks.claim(job_id, 1, me).attempts == 2  # the take-over rules
    assert chunks.resume(job_id, 4, "plan-b") is None  # another plan: nothing kept
    assert chunks.resume(job_id, 5, "plan-a") is None  # other boundaries: likewise
    assert not chunks.reset(job_id, 4, "plan-b", owner=me)  # the job is not held by me
    assert chunks.resume(job_id, 4, "plan-a") == {0}  # nothing was wiped
    assert chunks.reset(job_id, 4, "plan-b")
    assert chunks.claim(job_id, 0, me).plan == "plan-b"
    assert chunks.holds_files(job_id) and chunks.ended_jobs() == []
    store.finish_job(job_id, "Failed", None, error_code=5000, error_message="x")
    assert chunks.ended_jobs() == [job_id]
    work = tmp_path / "work"
    (work / job_id).mkdir(parents=True)
    (work / job_id / "chunk0000.x.rung00.mp4").write_bytes(b"x")
    context = ChunkContext(chunks, work_storage_location(str(work)), tmp_path / "here", me)
    end_job(context, job_id)  # what the sweep does with each of `ended_jobs`
    assert not (work / job_id).exists()
    assert not chunks.holds_files(job_id) and chunks.ended_jobs() == []
    assert "Running" not in [r.state for r in chunks.rows(job_id)]


def test_four_chunks_on_two_workers(cluster, workers, sources, tmp_path):
    first, second = workers
    with cluster.client() as client:
        output = tmp_path / "out"
        job_id = client.post("/Job", json=chunk_job(sources["four"], output)).json()["JobId"]
        view = wait_final(client, job_id, timeout=120)
        assert view["State"] == "Succeeded", (view, first.tail(), second.tail())
        report = client.get(f"/reporting/{job_id}").json()
    assert report["Chunks"] == 4
    details = report["ChunkDetails"]
    assert [d["Chunk"] for d in details] == [0, 1, 2, 3]
    workers = {d["Worker"].rsplit(":", 1)[1] for d in details}
    assert workers == {str(first.pid), str(second.pid)}, details
    frames = count_frames(sources["four"] / "clip.mp4")
    assert sum(d["Frames"] for d in details) == frames
    assert list(rung_frames(output).values()) == [frames]
    rows = chunk_rows(cluster, job_id)
    assert [r.state for r in rows] == ["Done"] * 4
    progress = [e["Progress"] for e in view["Events"] if e["MessageType"] == "EncodingProgress"]
    assert progress == sorted(progress)
    wait_for(lambda: work_folder_empty(cluster), 10)


def test_watermarks_travel_with_the_tasks(tmp_path):
    """A job's Watermarker goes into the tasks file with the tasks (once), its image path
    reduced to a name: the plan's fingerprint does not depend on the coordinator's folders,
    and the unpickled copy blends as the original does."""

    def tasks(folder: Path) -> list[ChunkTask]:
        folder.mkdir()
        Image.new("RGBA", (32, 32), (255, 0, 0, 255)).save(folder / "logo.png")
        spec = WatermarkSpec(folder / "logo.png", 100, 100, 25, 1.0, 0.0, None, 0.0, 0.0)
        marks = Watermarker([spec], 160, 90)
        return [
            ChunkTask(
                Chunk(i, 50 * i, 50 * i + 50),
                folder / "clip.mp4",
                None,
                Fraction(25),
                0.0,
                (),
                2.0,
                marks,
            )
            for i in range(2)
        ]

    original = tasks(tmp_path / "a")
    here, there = _portable(original), _portable(tasks(tmp_path / "b"))
    assert plan_fingerprint(here, 1) == plan_fingerprint(there, 1)
    assert here[0].watermarks is here[1].watermarks
    travelled = pickle.loads(pickle.dumps(here))[0].watermarks
    blank = np.full((135, 160), 16, dtype=np.uint8)

    def marked(marks: Watermarker) -> np.ndarray:
        frame = av.VideoFrame.from_ndarray(blank, format="yuv420p")
        frame.pts, frame.time_base = 25, Fraction(1, 25)
        return marks.apply(frame, 1.0).to_ndarray()

    frames = [marked(marks) for marks in (original[0].watermarks, travelled)]
    assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], blank)


def test_a_watermarked_job_chunks_on_both_workers(cluster, workers, sources, tmp_path):
    first, second = workers
    source = tmp_path / "in"
    source.mkdir()
    shutil.copyfile(sources["four"] / "clip.mp4", source / "clip.mp4")
    Image.new("RGBA", (32, 32), (255, 0, 0, 255)).save(source / "logo.png")
    job = chunk_job(source, tmp_path / "out")
    job["ContentProcessing"]["VisibleVideoWatermarks"] = [
        {"WatermarkFileName": "logo.png", "SizePercentage": 25, "OpacityPercentage": 100}
    ]
    with cluster.client() as client:
        job_id = client.post("/Job", json=job).json()["JobId"]
        view = wait_final(client, job_id, timeout=120)
        assert view["State"] == "Succeeded", (view["Events"][-3:], first.tail(), second.tail())
        report = client.get(f"/reporting/{job_id}").json()
    assert report["Chunks"] == 4
    pids = {d["Worker"].rsplit(":", 1)[1] for d in report["ChunkDetails"]}
    assert pids == {str(first.pid), str(second.pid)}, report["ChunkDetails"]
    frames = count_frames(source / "clip.mp4")
    assert list(rung_frames(tmp_path / "out").values()) == [frames]


def test_cancel_stops_every_chunk(cluster, workers, sources, tmp_path):
    with cluster.client() as client:
        output = tmp_path / "out"
        job = chunk_job(sources["heavy"], output, heavy=True)
        job_id = client.post("/Job", json=job).json()["JobId"]

        def chunks_running() -> bool:
            return sum(r.state == "Running" for r in chunk_rows(cluster, job_id)) >= 2

        wait_for(chunks_running, 60, 0.1)
        asked = time.monotonic()
        assert client.delete(f"/Job/{job_id}").status_code in (200, 202, 204)
        view = wait_final(client, job_id, timeout=10)
        assert time.monotonic() - asked < 5, "cancelled after more than 5 s"
        assert view["State"] == "Cancelled" and view["Events"][-1]["ErrorCode"] == 5001
        assert not any(r.state == "Running" for r in chunk_rows(cluster, job_id))

        def all_ended() -> bool:
            """Every chunk that started ended (each worker logs how its chunk ended)."""
            for worker in workers:
                messages = [line["message"] for line in worker.lines() if job_id in line["message"]]
                started = sum(bool(STARTED.search(m)) for m in messages)
                if started != sum(bool(ENDED.search(m)) for m in messages):
                    return False
            return True

        wait_for(all_ended, 5, 0.1)
    assert not output.exists() or not any(output.iterdir())
    wait_for(lambda: work_folder_empty(cluster), 10)


def test_kill_9_mid_chunk_reruns_the_chunk(cluster, workers, sources, tmp_path):
    with cluster.client() as client:
        output = tmp_path / "out"
        job = chunk_job(sources["heavy"], output, heavy=True)
        job_id = client.post("/Job", json=job).json()["JobId"]
        wait_for(lambda: job_state(client, job_id)["State"] == "Running", 60)
        owner = wait_for(lambda: cluster.store.get_job(job_id).owner, 30)
        victim = next(w for w in workers if w.owner != owner)  # not the coordinator

        def victim_encoding() -> bool:
            """The victim holds a chunk, less than half done by a heartbeat of now."""
            now = datetime.datetime.now(datetime.UTC)
            return any(
                row.state == "Running"
                and row.owner == victim.owner
                and row.progress < 0.5
                and row.heartbeat_at is not None
                and (now - row.heartbeat_at).total_seconds() < 0.3
                for row in chunk_rows(cluster, job_id)
            )

        wait_for(victim_encoding, 60, 0.05)
        victim.kill()
        # The chunk the victim was encoding when it died (its row as the kill left it).
        held = [r for r in chunk_rows(cluster, job_id) if r.owner == victim.owner]
        killed = next(r for r in held if r.state == "Running")
        view = wait_final(client, job_id, timeout=180)
        assert view["State"] == "Succeeded", view["Events"][-3:]
        report = client.get(f"/reporting/{job_id}").json()
    rows = {r.chunk: r for r in chunk_rows(cluster, job_id)}
    again = rows[killed.chunk]
    assert again.state == "Done" and again.owner != victim.owner and again.attempts == 2
    assert str(victim.pid) not in report["ChunkDetails"][killed.chunk]["Worker"]
    frames = count_frames(sources["heavy"] / "clip.mp4")
    assert report["Chunks"] == 4
    assert sum(d["Frames"] for d in report["ChunkDetails"]) == frames
    assert set(rung_frames(output).values()) == {frames}
    assert len(rung_frames(output)) == 2


# ------------------------------------------------- the coordinator dies: a short lease


@pytest.fixture(scope="module")
def short_lease_farm(tmp_path_factory):
    """Another farm (own schema and queues) whose lease is short, as the other cluster tests
    have it: a job whose coordinator died is taken over within seconds. Chunks of one 2 s
    segment: the `four` source makes 12 quick ones, so that many are left when the
    coordinator has done one."""
    root = tmp_path_factory.mktemp("cluster-chunks-lease")
    with (
        postgres_schema() as database,
        rabbitmq_broker() as broker,
        Cluster(root, broker, database, TokenIssuer(root), lease=SHORT_LEASE, attempts=3) as farm,
    ):
        work = (root / "work").as_uri()
        workers = [
            farm.worker(name, "--work-storage", work, "--chunk-seconds", "2")
            for name in ("c1", "c2")
        ]
        yield farm, workers


def test_kill_9_of_the_coordinator_keeps_its_done_chunks(short_lease_farm, sources, tmp_path):
    """The coordinator is killed after it finished a chunk and before every chunk is done:
    the other worker takes the job over and keeps the Done chunks (the dead worker's too:
    same rows, same attempt, the report names the dead worker), encodes only the rest."""
    farm, workers = short_lease_farm
    chunks = ChunkStore(farm.store, SHORT_LEASE, 3)
    with farm.client() as client:
        output = tmp_path / "out"
        job_id = client.post("/Job", json=chunk_job(sources["four"], output)).json()["JobId"]
        owner = wait_for(lambda: farm.store.get_job(job_id).owner, 60, 0.05)
        coordinator = next(w for w in workers if w.owner == owner)
        survivor = next(w for w in workers if w is not coordinator)

        def coordinator_did_one() -> list[ChunkRow] | None:
            rows = chunks.rows(job_id)
            done = [r for r in rows if r.state == "Done"]
            mine = [r for r in done if r.owner == coordinator.owner]
            return mine if mine and len(done) < len(rows) else None

        wait_for(coordinator_did_one, 90, 0.05)
        coordinator.kill()
        # The Done chunks as the kill left them (the dead worker's among them).
        kept = {r.chunk: r for r in chunks.rows(job_id) if r.state == "Done"}
        assert any(r.owner == coordinator.owner for r in kept.values())
        view = wait_final(client, job_id, timeout=120)
        assert view["State"] == "Succeeded", (view["Events"][-3:], survivor.tail())
        report = client.get(f"/reporting/{job_id}").json()
    assert farm.store.get_job(job_id).attempts == 2 and encodes(view) == 2
    rows = {r.chunk: r for r in chunks.rows(job_id)}
    for index, before in kept.items():  # kept, not encoded again
        after = rows[index]
        assert (after.state, after.owner, after.attempts) == ("Done", before.owner, before.attempts)
        assert after.result == before.result
        worker = report["ChunkDetails"][index]["Worker"]
        assert worker.rsplit(":", 1)[1] == before.owner.split(":")[1], (worker, before.owner)
    dead = [d for d in report["ChunkDetails"] if d["Worker"].endswith(f":{coordinator.pid}")]
    assert dead and {d["Chunk"] for d in dead} <= set(kept)
    assert all(r.state == "Done" for r in rows.values())
    messages = [line["message"] for line in survivor.lines() if job_id in line["message"]]
    kept_log = re.compile(r"(\d+) of 12 chunks done by an earlier attempt kept")
    resumed = [kept_log.search(m) for m in messages]
    counts = [int(m[1]) for m in resumed if m]  # as the survivor resumed the job
    assert len(counts) == 1 and counts[0] >= len(kept), messages
    frames = count_frames(sources["four"] / "clip.mp4")
    assert report["Chunks"] == 12
    assert sum(d["Frames"] for d in report["ChunkDetails"]) == frames
    assert list(rung_frames(output).values()) == [frames]
    # The job's folder of the work storage goes when the job ends, and its rows say so.
    wait_for(lambda: not (farm.root / "work" / job_id).exists(), 10)
    assert not chunks.holds_files(job_id)


# ------------------------------------------------------------- S3 work storage, on Redis


@pytest.fixture(scope="module")
def s3_farm(tmp_path_factory, moto_server):
    """Another farm (Redis broker, own schema) whose work storage is a folder of a bucket on
    moto (S3Compatible), the credentials in VIPE_WORK_STORAGE_KEY / _SECRET."""
    root = tmp_path_factory.mktemp("cluster-chunks-s3")
    bucket = moto_server.create_bucket()
    work = f"S3Compatible:{moto_server.endpoint}/{bucket}/work"
    credentials = {
        "VIPE_WORK_STORAGE_KEY": moto_server.access_key,
        "VIPE_WORK_STORAGE_SECRET": moto_server.secret_key,
    }
    with (
        postgres_schema() as database,
        redis_broker() as broker,
        Cluster(root, broker, database, TokenIssuer(root), lease=LEASE, attempts=3) as cluster,
    ):
        workers = [
            cluster.worker(
                name,
                "--work-storage",
                work,
                "--chunk-seconds",
                str(CHUNK_SECONDS),
                env=credentials,
            )
            for name in ("s3-w1", "s3-w2")
        ]
        yield cluster, workers, moto_server.client("s3"), bucket


def test_four_chunks_through_s3_work_storage(s3_farm, sources, tmp_path):
    cluster, workers, s3, bucket = s3_farm
    with cluster.client() as client:
        output = tmp_path / "out"
        job_id = client.post("/Job", json=chunk_job(sources["four"], output)).json()["JobId"]
        view = wait_final(client, job_id, timeout=120)
        assert view["State"] == "Succeeded", [w.tail() for w in workers]
        report = client.get(f"/reporting/{job_id}").json()
    assert report["Chunks"] == 4
    frames = count_frames(sources["four"] / "clip.mp4")
    assert sum(d["Frames"] for d in report["ChunkDetails"]) == frames
    pids = {d["Worker"].rsplit(":", 1)[1] for d in report["ChunkDetails"]}
    assert pids == {str(w.pid) for w in workers}  # the source and chunks crossed the bucket
    assert list(rung_frames(output).values()) == [frames]
    messages = [line["message"] for w in workers for line in w.lines()]
    assert sum(bool(re.search(rf"job {job_id}: chunk \d+ done", m)) for m in messages) == 4

    # The chunk files went through the bucket, and the job's folder goes when the job ends.
    def folder_gone() -> bool:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"work/{job_id}/")
        return listed.get("KeyCount", 0) == 0

    wait_for(folder_gone, 10, 0.1)
