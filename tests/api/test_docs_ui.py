"""Swagger UI and ReDoc work offline: the pages and their assets come from this server, never a CDN.

Without a browser (TestClient): the pages name only local assets, the assets are served, the pages stay
open when API keys are set, and the named examples of POST /v1/jobs are valid JobSpecs.

In a real headless Chromium (Debian's `chromium`, driven by playwright), on the real app served by
uvicorn with a real Redis: every request to a host other than 127.0.0.1 is refused and counted, the
operations each page renders are exactly those of /openapi.json, and "Try it out" on the teacher example
of POST /v1/jobs, with the API key given through Swagger's "Authorize" dialog (the server has keys, so
without it the answer would be 401), shows 202 (no worker is needed: the job stays queued). Screenshots
go to tmp_path, or to $KD_DOCS_SCREENSHOTS for `docs/swagger-ui.png` (`make docs-screenshots`).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from api.docs_ui import STATIC_URL
from api.main import create_app
from api.routes.jobs import SUBMIT_EXAMPLES
from api.settings import Settings
from kdcore.spec import JobSpec
from tests.harness import serve_app as serve

INSTALL_CHROMIUM = "apt-get update && apt-get install -y chromium"
KEY = "docs-key"  # the browser tests' server has this one key (tenant "docs")
# What the bundles would fetch from elsewhere, refused by the pages' Content-Security-Policy (so never
# requested): redoc 2's "API docs by Redocly" logo, which redoc hides when it does not load.
KNOWN_REFUSED = {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
RECORD_CSP = """window.__refused = [];
document.addEventListener('securitypolicyviolation', e => window.__refused.push(e.blockedURI));"""


# ---- without a browser ---------------------------------------------------------------------------------

def test_pages_name_only_local_assets_and_stay_open_with_keys(redis_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path, api_keys="k1:alpha"))
    with TestClient(app) as http:
        for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")),
                             ("/redoc", ("redoc.standalone.js", "favicon.png"))):
            r = http.get(page)  # no key: the docs are open, like /openapi.json
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assert "cdn." not in r.text and "fonts.googleapis" not in r.text and "tiangolo.com" not in r.text
            for name in assets:
                assert f'"{STATIC_URL}/{name}"' in r.text
                asset = http.get(f"{STATIC_URL}/{name}")
                assert asset.status_code == 200 and len(asset.content) > 1000, name
        assert http.get("/docs/oauth2-redirect").status_code == 200
        assert http.get("/openapi.json").status_code == 200
        assert http.post("/v1/jobs", json=SUBMIT_EXAMPLES["teacher"]["value"]).status_code == 401  # still guarded
        schema = http.get("/openapi.json").json()  # the scheme Swagger's Authorize button fills in
        assert schema["components"]["securitySchemes"]["apiKey"] == {
            **schema["components"]["securitySchemes"]["apiKey"], "type": "http", "scheme": "bearer"}
        assert schema["paths"]["/v1/jobs"]["post"]["security"] == [{"apiKey": []}]
        assert "security" not in schema["paths"]["/v1/catalog"]["get"]


def test_named_examples_are_valid_and_the_teacher_runs(redis_url: str, redis_client, tmp_path: Path) -> None:
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path))
    body = app.openapi()["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert list(body["examples"]) == list(SUBMIT_EXAMPLES)
    assert list(SUBMIT_EXAMPLES)[0] == "teacher"  # Swagger UI fills the body with the first one
    for name, example in body["examples"].items():
        assert example["summary"] and example["description"], name
        JobSpec.model_validate(example["value"])
    with TestClient(app) as http:
        r = http.post("/v1/jobs", json=SUBMIT_EXAMPLES["teacher"]["value"])
        assert r.status_code == 202 and r.json()["status"] == "queued"
        # the others name ids to replace: a placeholder is a 422 that points at the teacher
        r = http.post("/v1/jobs", json=SUBMIT_EXAMPLES["kd_from_upload"]["value"])
        assert r.status_code == 422 and r.json()["errors"][0]["loc"][:2] == ["body", "teacher"]
    chain = app.openapi()["components"]["schemas"]["ChainCreate"]
    assert chain.get("examples"), "POST /v1/chains keeps its example"


# ---- in a real browser ---------------------------------------------------------------------------------

def _chromium() -> str:
    path = os.environ.get("KD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(f"Debian's chromium is not installed; run: {INSTALL_CHROMIUM}  "
                    "(`make test` does it itself when run as root)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def base_url(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis.Redis.from_url(redis_url).flushdb()
    with serve(Settings(redis_url=redis_url, data_dir=tmp_path_factory.mktemp("docs-ui"),
                        api_keys=f"{KEY}:docs")) as base:
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
    """A fresh page whose requests to any host but 127.0.0.1 are aborted and recorded."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.context.add_init_script(RECORD_CSP)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def check_offline(self) -> None:
        assert self.outside == [], f"the page requested other hosts: {self.outside}"
        refused = set(self.page.evaluate("window.__refused"))
        assert refused <= KNOWN_REFUSED, f"the page tried other hosts (refused by its CSP): {refused - KNOWN_REFUSED}"
        assert self.errors == [], self.errors


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    try:
        yield p
    finally:
        p.context.close()


def _operations(base_url: str) -> dict[tuple[str, str], str]:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    return {(method.upper(), path): op["operationId"] for path, ops in schema["paths"].items()
            for method, op in ops.items()}


def _screenshots(tmp_path: Path) -> Path:
    kept = os.environ.get("KD_DOCS_SCREENSHOTS")
    return Path(kept) if kept else tmp_path


def test_swagger_ui_offline_all_operations_and_try_it_out(base_url: str, page: Page, tmp_path: Path) -> None:
    pg = page.page
    pg.goto(f"{base_url}/docs")
    pg.wait_for_selector(".opblock", timeout=15_000)
    rendered = pg.eval_on_selector_all(".opblock", """els => els.map(e => [
        e.querySelector('.opblock-summary-method').textContent,
        e.querySelector('.opblock-summary-path').getAttribute('data-path')])""")
    assert len(rendered) == len({tuple(r) for r in rendered})
    assert {tuple(r) for r in rendered} == set(_operations(base_url))
    last = pg.locator(".opblock-tag-section").last.bounding_box()  # down to the last operation, not the schemas
    pg.screenshot(path=str(_screenshots(tmp_path) / "swagger-ui.png"), full_page=True,
                  clip={"x": 0, "y": 0, "width": 1280, "height": last["y"] + last["height"] + 16})

    op = pg.locator("#operations-jobs-submit_v1_jobs_post")
    op.locator(".opblock-summary").click()
    examples = op.locator(".opblock-section-request-body .examples-select select")
    # the click expands the operation asynchronously; all_inner_texts() does not wait, so wait for the menu
    examples.locator("option").last.wait_for(state="attached", timeout=15_000)
    assert examples.locator("option").all_inner_texts() == [e["summary"] for e in SUBMIT_EXAMPLES.values()]
    assert examples.input_value() == "teacher"
    # the key through the Authorize dialog (the bearer scheme api/deps.py declares), as a user gives it
    pg.locator(".auth-wrapper button.authorize").click()
    dialog = pg.locator(".dialog-ux .modal-ux")
    dialog.locator("input").fill(KEY)
    dialog.locator("button.authorize").click()
    dialog.locator("button.btn-done").click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table .response-col_status").nth(1)
    status.wait_for(timeout=15_000)
    assert status.inner_text().strip() == "202"
    answer = op.locator(".live-responses-table").inner_text()
    assert '"status": "queued"' in answer and '"id": "job_' in answer and "location: /v1/jobs/job_" in answer
    assert f"Authorization: Bearer {KEY}" in op.locator(".curl-command").inner_text()
    op.locator(".live-responses-table").screenshot(path=str(tmp_path / "swagger-try-it-out.png"))
    page.check_offline()


def test_redoc_offline_all_operations(base_url: str, page: Page, tmp_path: Path) -> None:
    pg = page.page
    pg.goto(f"{base_url}/redoc")
    pg.wait_for_selector("[data-section-id*='/operation/']", timeout=15_000)
    sections = pg.eval_on_selector_all("[data-section-id*='/operation/']",
                                       "els => els.map(e => e.getAttribute('data-section-id'))")
    rendered = [s.rsplit("/operation/", 1)[1] for s in sections]
    assert sorted(rendered) == sorted(_operations(base_url).values())
    # the named examples are listed for POST /v1/jobs too
    jobs = pg.locator("[data-section-id$='/operation/submit_v1_jobs_post']")
    assert SUBMIT_EXAMPLES["teacher"]["summary"] in jobs.inner_text()
    pg.screenshot(path=str(tmp_path / "redoc.png"))
    page.check_offline()
