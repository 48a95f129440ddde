"""The dashboard at /ui.

Without a browser: the page and its assets are served from this package with a Content-Security-Policy
that allows this origin only, name nothing on another host, stay open when API keys are set, and an unknown
asset is a 404.

In a real headless Chromium (Debian's `chromium`, driven by playwright), against the real service (the
session's stack: Redis and a Celery worker; here its API served with an API key): every request to a host
other than 127.0.0.1 is refused and counted. Without a key the page says to enter one; with the key typed
into the box, the job list shows live status, the job page follows a real distillation job to `succeeded`
from its event stream (curves drawn per epoch, the report's teacher vs student and KD gain, a download),
and cancels a running job. Every API request carries the key in its Authorization header and none in its
URL. Screenshots go to tmp_path, or `dashboard.png` to $KD_DOCS_SCREENSHOTS (`make ui-screenshot`).
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.ui import MEDIA
from api.settings import Settings
from tests import helpers
from tests.harness import Stack, serve_app

KEY = "dash-key-7f3a"
INSTALL_CHROMIUM = "apt-get update && apt-get install -y chromium"


# ---- without a browser ---------------------------------------------------------------------------------

def test_page_and_assets_are_local_and_open_with_keys(redis_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path, api_keys=f"{KEY}:t"))
    with TestClient(app) as http:
        for path in ("/ui", "/ui/"):
            r = http.get(path)  # no key: the page holds no data
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assert "'unsafe-inline'" not in r.headers["content-security-policy"]
        for name, media in MEDIA.items():
            asset = http.get(f"/ui/assets/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(media), name
            assert f"/ui/assets/{name}" in r.text
            assert not re.search(r"https?://", asset.text.replace("http://www.w3.org/2000/svg", "")), name
        assert not re.search(r"https?://", r.text)
        assert http.get("/ui/assets/..%2Fapp.js").status_code == 404
        assert http.get("/ui/assets/index.html").status_code == 404
        assert http.get("/v1/jobs").status_code == 401  # the API behind it still wants the key
        assert "/ui" not in http.get("/openapi.json").json()["paths"]


# ---- in a real browser ---------------------------------------------------------------------------------

def _chromium() -> str:
    path = os.environ.get("KD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(f"Debian's chromium is not installed; run: {INSTALL_CHROMIUM}  "
                    "(`make test` does it itself when run as root)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def base_url(service: Stack) -> Iterator[str]:
    """The service's API again, in this process, with an API key: the same Redis, queue and data folder,
    so the service's worker runs what is submitted here."""
    settings = Settings(redis_url=service.redis_url, data_dir=service.data_dir, api_keys=f"{KEY}:dashboard")
    with serve_app(settings) as base:
        yield base


@pytest.fixture(scope="module")
def browser(base_url: str) -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed; run: .venv/bin/python -m pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as p:
        # --no-sandbox: Chromium refuses to start as root with its sandbox (CI runs as root)
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh page whose requests to any host but 127.0.0.1 are aborted and recorded; every request's URL
    and Authorization header is kept."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.outside: list[str] = []
        self.requests: list[tuple[str, str | None, bool]] = []  # url, Authorization, whether a key was saved
        self.key_saved = False
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            self.requests.append((url, route.request.headers.get("authorization"), self.key_saved))
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def check(self) -> None:
        assert self.outside == [], f"the page requested other hosts: {self.outside}"
        assert self.errors == [], self.errors
        assert not [u for u, _, _ in self.requests if KEY in u], "the key went into a URL"
        api_calls = [r for r in self.requests if urlsplit(r[0]).path.startswith("/v1/")]
        # with a key saved, every API call carries it; without, none carries anything else
        assert api_calls and all(auth == f"Bearer {KEY}" if saved else auth in (None, f"Bearer {KEY}")
                                 for _, auth, saved in api_calls), api_calls


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    try:
        yield p
    finally:
        p.context.close()


def _submit(base: str, spec: dict[str, Any]) -> str:
    r = httpx.post(f"{base}/v1/jobs", json=spec, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _get(base: str, path: str) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def _enter_key(page: Page, base_url: str) -> None:
    pg = page.page
    pg.goto(f"{base_url}/ui")
    problem = pg.locator("#problem")
    problem.wait_for(state="visible", timeout=15_000)  # no key yet: the list call answered 401
    assert "401" in problem.inner_text() and "enter the API key" in problem.inner_text()
    pg.fill("#key", KEY)
    pg.click("#key-save")
    problem.wait_for(state="hidden", timeout=15_000)
    assert pg.evaluate("localStorage.getItem('distillery.apiKey')") == KEY
    pg.locator("#jobs tbody tr").first.wait_for(timeout=15_000)  # the list, read with the key
    page.key_saved = True


def test_follows_a_real_job_to_succeeded_with_report_and_download(base_url: str, page: Page, tmp_path: Path) -> None:
    pg = page.page
    _enter_key(page, base_url)
    # the digits scenario of the README's CLI transcript: teacher mlp 256-256, student mlp 32, 8 epochs each
    teacher = _submit(base_url, helpers.spec(name="dash-teacher"))
    kd = _submit(base_url, helpers.kd_spec({"job": teacher}, epochs=8, baseline=True, name="dash-kd",  # waits for it
                                           export={"formats": ["pt2"], "latency": True}))

    row = pg.locator(f"tr[data-job-id='{kd}']")
    row.wait_for(timeout=15_000)  # the list refreshes itself
    assert "dash-kd" in row.inner_text()
    row.locator("a").click()
    head = pg.locator("#job-head[data-status='succeeded']")
    head.wait_for(timeout=120_000)  # followed live from the event stream
    pg.locator("#report-table").wait_for(timeout=15_000)

    report = _get(base_url, f"/v1/jobs/{kd}/report").json()
    events = [e for e in _get(base_url, f"/v1/jobs/{kd}/events").json()["data"] if e["type"] == "epoch"]
    assert len(events) == 16  # 8 distill + 8 baseline
    assert pg.locator("#loss-chart").get_attribute("data-points") == str(2 * len(events))  # train and test loss
    assert pg.locator("#acc-chart").get_attribute("data-points") == str(len(events))
    table = pg.locator("#report-table").inner_text().lower()  # (the header is upper case by CSS)
    assert "teacher" in table and "student" in table
    assert f"{100 * report['student']['top1']:.1f}%" in table and f"{100 * report['teacher']['top1']:.1f}%" in table
    assert f"{report['student']['params']:,}" in table
    gain = report["kd_gain"]
    assert pg.locator("#kd-gain").inner_text() == f"{'+' if gain >= 0 else ''}{100 * gain:.1f} pts"
    assert pg.locator("#compression").inner_text() == f"{report['compression']:.1f}×"
    for bs, row in report["export"]["latency"]["batches"].items():
        cells = pg.locator(f"tr[data-latency='{bs}'] td").all_inner_texts()
        assert cells == [f"latency, batch {bs}", f"{row['teacher_ms']:.3f} ms", f"{row['student_ms']:.3f} ms"], cells
        assert pg.locator(f"[data-speedup='{bs}']").inner_text() == f"{row['speedup']:.1f}×"
    assert report["export"]["pt2"]["file"] == "student.pt2"
    assert pg.locator("[data-output='student.pt2']").count() == 1  # the exported student is offered too
    pg.locator(".curves-img[data-loaded]").wait_for(timeout=15_000)  # the curves.png fetched with the key

    shots = Path(os.environ.get("KD_DOCS_SCREENSHOTS") or tmp_path)
    pg.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    with pg.expect_download(timeout=15_000) as got:
        pg.click("[data-output='student.safetensors']")
    saved = tmp_path / "student.safetensors"
    got.value.save_as(saved)
    assert saved.read_bytes() == _get(base_url, f"/v1/jobs/{kd}/artifacts/student.safetensors").content

    pg.click("text=All jobs")
    pg.locator(f"tr[data-job-id='{kd}'][data-status='succeeded']").wait_for(timeout=15_000)
    pg.locator(f"tr[data-job-id='{teacher}'][data-status='succeeded']").wait_for(timeout=15_000)
    pg.screenshot(path=str(tmp_path / "dashboard-list.png"))
    pg.reload()  # the key stays in the browser
    pg.locator(f"tr[data-job-id='{kd}']").wait_for(timeout=15_000)
    assert pg.input_value("#key") == KEY
    page.check()


def test_cancels_a_running_job(base_url: str, page: Page) -> None:
    pg = page.page
    _enter_key(page, base_url)
    job = _submit(base_url, helpers.spec(name="dash-long", training={"epochs": 500, "batch_size": 64, "lr": 0.05,
                                                                     "seed": 0}))
    pg.goto(f"{base_url}/ui#/jobs/{job}")
    # (locators, not wait_for_function: the page's CSP forbids the eval that would need)
    pg.locator("#acc-chart[data-points]:not([data-points='0'])").wait_for(timeout=60_000)
    pg.click("#cancel")
    pg.locator("#job-head[data-status='cancelled']").wait_for(timeout=60_000)
    assert _get(base_url, f"/v1/jobs/{job}").json()["status"] == "cancelled"
    assert pg.locator("#cancel").count() == 0

    pg.goto(f"{base_url}/ui#/jobs/job_0000000000000000")  # an unknown id: the API's problem, in one line
    problem = pg.locator("#problem")
    problem.wait_for(state="visible", timeout=15_000)
    assert problem.inner_text() == "404 Not found: no job job_0000000000000000"
    page.key_saved = False
    pg.click("#key-clear")  # forgotten: gone from the browser, and the API says so
    assert pg.evaluate("localStorage.getItem('distillery.apiKey')") is None
    pg.locator("#problem:has-text('401')").wait_for(timeout=15_000)
    page.check()
