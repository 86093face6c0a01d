"""The web console driven in a real Chromium (Debian's `chromium`, installed by `.ci/run` or
once by the `chromium` fixture) through Playwright, against `vipe serve` (ApiServer: the real
app under uvicorn with TLS).

One scenario, in order: a wrong key is refused with the API's message; sign in with a
Tenant-Auth key; submit a job in the submit view (validated by the server first) and watch it
go Queued -> Running -> Succeeded on its page with the progress bar moving (SSE, no reload);
the preview plays (currentTime advances, a frame decoded), seeks, and shows thumbnails; the
jobs list updates live and shows an XSS ExternalId as text with no script run; another
tenant's job is not visible; a second job is cancelled from its page (5001); the page works at
phone width without horizontal scroll; no CSP violation. Screenshots of the jobs list and a
job page are written (VIPE_UPDATE_SCREENSHOTS=1 copies them into docs/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from api_helpers import REPO, ApiServer, TokenIssuer, tiny_job, wait_final
from mediagen import make_media

if os.environ.get("VIPE_REQUIRE_TEST_SERVERS"):  # CI (.ci/run installs both): never skipped
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install vipe[dev]")


def _which_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium: installed once with apt-get when missing (as .ci/run does), so that
    the README's test command skips nothing here; skipped only where it cannot be installed
    (not root, no apt-get), and failed instead in CI."""
    found = _which_chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium"],
        ):
            subprocess.run(command, capture_output=True, timeout=900, check=False)
        found = _which_chromium()
    if found is None:
        if os.environ.get("VIPE_REQUIRE_TEST_SERVERS"):
            pytest.fail("chromium is not installed and cannot be installed here")
        pytest.skip("Debian's chromium is not installed and cannot be installed here")
    return found


XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("console-source")
    # 30 s: seconds of encoding even on a quiet machine, so the progress bar is seen moving
    make_media(folder / "movie.mp4", duration=30, width=320, height=180)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console-data")
    issuer = TokenIssuer(folder)
    with ApiServer(folder / "data", issuer.auth_settings(), workers=1) as api:
        yield api


def console_job(source: Path, output: Path, external_id: str | None = None) -> dict[str, Any]:
    """Two renditions, thumbnails and PSNR/SSIM: what the job page and preview show."""
    job = tiny_job(
        source,
        output,
        VideoRepresentations=[
            {"Width": 320, "Height": 180, "BitrateInKbps": 400},
            {"Width": 160, "Height": 90, "BitrateInKbps": 150},
        ],
        QualityMetrics=True,
    )
    job["Thumbnails"] = {"Generate": True, "Width": 96, "DurationInSeconds": 1}
    if external_id is not None:
        job["ExternalId"] = external_id
    return job


def test_console_in_chromium(chromium, server, source, tmp_path):
    started = time.monotonic()
    key_a = server.add_tenant("console-a")
    key_b = server.add_tenant("console-b")
    a = server.client(f"Tenant-Auth {key_a}")
    b = server.client(f"Tenant-Auth {key_b}")
    sync_playwright = playwright_api.sync_playwright
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1280, "height": 800}
        )
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                problems.append(message.text)
                if "Content Security Policy" in message.text or message.type == "error"
                else None
            ),
        )
        dialogs: list[str] = []

        def accept(dialog) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)

        # -- the page and its CSP ------------------------------------------------------------
        answer = page.goto(f"{server.url}/console")
        assert answer is not None and answer.status == 200
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp

        # -- a wrong key is refused with the API's message -----------------------------------
        page.fill("#key", "not-a-key")
        page.click("#sign-in")
        page.wait_for_selector("#sign-in-error:has-text('not authorized')")
        assert page.evaluate("sessionStorage.length") == 0

        # -- sign in -------------------------------------------------------------------------
        page.fill("#key", key_a)
        page.click("#sign-in")
        page.wait_for_selector("table.jobs")
        assert page.evaluate("Object.values(sessionStorage)") == [f"Tenant-Auth {key_a}"]

        # another tenant's job, and a job of ours running first (ours then queues behind it)
        other = b.post("/Job", json=tiny_job(source, tmp_path / "b")).json()["JobId"]
        wait_final(b, other)
        blocker = a.post("/Job", json=console_job(source, tmp_path / "blocker"))
        assert blocker.status_code == 201, blocker.text

        # -- submit: validation lists problems by JSON path, then the job is created ---------
        page.click("text=New job")
        page.wait_for_selector("#job-json")
        broken = console_job(source, tmp_path / "x")
        broken["ContentProcessing"]["VideoRepresentations"][0]["Width"] = "wide"
        del broken["ContentPublishing"]
        page.fill("#job-json", json.dumps(broken))
        page.click("#validate")
        page.wait_for_selector("#problems li")
        fields = page.eval_on_selector_all(
            "#problems li", "items => items.map(i => i.dataset.field)"
        )
        assert "ContentPublishing" in fields
        assert any(f.startswith("ContentProcessing.VideoRepresentations") for f in fields), fields

        job = console_job(source, tmp_path / "out")
        page.fill("#job-json", json.dumps(job, indent=2))
        page.evaluate(
            """() => {
              window.__seen = {states: [], progress: []};
              const record = () => {
                const state = document.querySelector('#job-state');
                const bar = document.querySelector('#job-progress');
                if (state && window.__seen.states.at(-1) !== state.dataset.state)
                  window.__seen.states.push(state.dataset.state);
                if (bar && window.__seen.progress.at(-1) !== bar.value)
                  window.__seen.progress.push(bar.value);
              };
              new MutationObserver(record).observe(document.body,
                {subtree: true, childList: true, attributes: true, characterData: true});
              setInterval(record, 50);
            }"""
        )
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        page.click("#submit")
        page.wait_for_url("**/console#/job/*")
        job_id = page.url.rsplit("/", 1)[-1]
        page.wait_for_selector("#job-state[data-state=Succeeded]", timeout=90_000)
        seen = page.evaluate("window.__seen")
        states = seen["states"]
        assert states[0] == "Queued" and "Running" in states and states[-1] == "Succeeded", states
        assert states.index("Running") < states.index("Succeeded")
        moving = [p for p in seen["progress"] if 0 < p < 100]
        assert len(set(seen["progress"])) >= 3 and moving, seen["progress"]
        # the same page all along: hash routes only, no reload
        assert all(url.startswith(f"{server.url}/console#") for url in navigations), navigations

        # -- the job page: timeline, streams with PSNR/SSIM, chart, report, key ids ----------
        page.wait_for_selector("#timeline li[data-type=JobSuccess]")
        page.wait_for_selector("#streams tbody tr")
        assert page.locator("#streams tbody tr").count() >= 2
        page.wait_for_selector("#rate-quality circle")
        page.wait_for_selector("#report:has-text('JobId')")
        assert page.locator("#job-title").inner_text() == job["ExternalId"]

        # -- the preview plays, decodes frames and seeks -------------------------------------
        page.wait_for_selector("video#preview")
        page.wait_for_function("() => document.querySelector('#preview').readyState >= 2")
        page.evaluate("document.querySelector('#preview').play()")
        page.wait_for_function("() => document.querySelector('#preview').currentTime > 0.5")
        frames = page.evaluate(
            "document.querySelector('#preview').getVideoPlaybackQuality().totalVideoFrames"
        )
        assert frames > 0
        assert page.evaluate("document.querySelector('#preview').videoWidth") == 320
        page.evaluate("document.querySelector('#preview').currentTime = 4.2")
        page.wait_for_function(
            "() => { const v = document.querySelector('#preview');"
            " return !v.seeking && v.currentTime > 4.3 && v.readyState >= 2; }"
        )
        page.wait_for_selector("#thumbnails canvas.thumb")
        assert page.locator("#rendition option").count() == 2
        page.screenshot(path=str(tmp_path / "console-job.png"), full_page=False)

        # -- the jobs list: live rows, XSS shown as text, other tenant invisible -------------
        page.click("text=← Jobs")
        page.wait_for_selector(f"tr[data-job-id='{job_id}'] td[data-state=Succeeded]")
        page.wait_for_selector("#live:has-text('live')")
        xss = a.post("/Job", json=tiny_job(source, tmp_path / "xss") | {"ExternalId": XSS})
        assert xss.status_code == 201, xss.text
        xss_id = xss.json()["JobId"]
        page.wait_for_selector(f"tr[data-job-id='{xss_id}']")  # arrives through the stream
        page.wait_for_selector(
            f"tr[data-job-id='{xss_id}'] td[data-state=Succeeded]", timeout=60_000
        )
        cell = page.locator(f"tr[data-job-id='{xss_id}'] td.ext")
        assert cell.inner_text() == XSS
        assert page.locator("table.jobs img").count() == 0
        assert page.evaluate("window.__xss") is None
        assert page.locator(f"tr[data-job-id='{other}']").count() == 0
        page.screenshot(path=str(tmp_path / "console-jobs.png"), full_page=False)

        page.goto(f"{server.url}/console#/job/{other}")
        page.wait_for_selector("p.error:has-text('Job not found')")

        # -- cancel a second job from its page ------------------------------------------------
        second = a.post("/Job", json=console_job(source, tmp_path / "second"))
        second_id = second.json()["JobId"]
        page.goto(f"{server.url}/console#/job/{second_id}")
        page.wait_for_selector("#job-state")
        page.click("#cancel")
        page.wait_for_selector("#job-state[data-state=Cancelled]", timeout=30_000)
        page.wait_for_selector("#job-error:has-text('5001')")
        page.wait_for_selector("#timeline li[data-type=FinalError]:has-text('5001')")
        assert dialogs and "Cancel job" in dialogs[-1]

        # -- phone width: no horizontal scroll ------------------------------------------------
        page.set_viewport_size({"width": 390, "height": 844})
        for route in ("#/jobs", f"#/job/{job_id}", "#/new"):
            page.goto(f"{server.url}/console{route}")
            page.wait_for_selector("main h1")
            page.wait_for_timeout(300)
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], (route, width)

        context.close()
        browser.close()
    a.close()
    b.close()
    assert not [p for p in problems if "Content Security Policy" in p or "page error" in p], (
        problems
    )
    for name in ("console-jobs.png", "console-job.png"):
        shot = tmp_path / name
        assert shot.stat().st_size > 10_000
        if os.environ.get("VIPE_UPDATE_SCREENSHOTS"):
            shutil.copyfile(shot, REPO / "docs" / name)
    assert time.monotonic() - started < 120
