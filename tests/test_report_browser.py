"""The report in a real headless browser: Debian's chromium driven by Playwright.

Opens the report of a fake-server run with failures and hostile text, and of a demo-like run, with
every network request blocked; checks there are no console errors, no request left the file, every
chart is drawn, no injected markup ran, and the record browser searches, filters and opens a record.
A full-page screenshot of each is saved under the test's tmp folder, and copied into
$CODECLM_ARTIFACTS when that is set.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it) and the `playwright`
package (the `test` extra). Without them the test skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from codeclm.programs.artifacts.html_report import write_report
from report_runs import demo_like_run, hostile_run

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI must run the browser test (.ci/run installs chromium, the test extra playwright)")
    pytest.skip(f"{reason} (apt-get install chromium; pip install -e '.[test]')")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """Both runs and their reports, made before the browser starts (Playwright's sync API runs an
    event loop, inside which a run's asyncio.run cannot start)."""
    root = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as monkeypatch:
        failures = write_report(hostile_run(root / "hostile", monkeypatch))
    return {"failures": failures, "demo": write_report(demo_like_run(root / "demo"))}


@pytest.fixture(scope="module")
def browser(reports):
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_report(browser, path: Path):
    """The page, with its console errors, page errors, dialogs and blocked requests collected."""
    context = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)
    page = context.new_page()
    seen = {"errors": [], "dialogs": [], "requests": []}
    page.on("console", lambda message: message.type == "error" and seen["errors"].append(message.text))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    url = path.resolve().as_uri()

    def guard(route):
        if route.request.url == url:
            route.continue_()
        else:
            seen["requests"].append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page.on("request", lambda request: request.url != url and seen["requests"].append(request.url))
    page.goto(url)
    page.wait_for_selector("#list li")
    return context, page, seen


def save(page, screenshot: Path) -> None:
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    target = os.environ.get("CODECLM_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(target) / screenshot.name)


def check_charts(page) -> int:
    charts = page.eval_on_selector_all(
        "svg.chart", "nodes => nodes.map(n => [n.querySelector('title').textContent, n.childElementCount,"
                     " n.getBoundingClientRect().width, n.getBoundingClientRect().height,"
                     " n.querySelectorAll('rect,line,text,g').length])")
    assert len(charts) >= 10
    for title, children, width, height, marks in charts:
        assert children > 1 and marks > 0 and width > 100 and height > 20, title
    return len(charts)


def test_report_of_a_run_with_failures(reports, browser, tmp_path):
    context, page, seen = open_report(browser, reports["failures"])
    try:
        check_charts(page)
        assert page.locator("details.failure").count() >= 2  # the 500s and the unparsable judgements
        page.locator("details.failure").first.click()
        total = page.locator("#list li").count()
        page.select_option("#status", "failed")
        failed = page.locator("#list li").count()
        assert 0 < failed < total
        assert set(page.locator("#list li .badge").all_text_contents()) == {"failed"}
        page.fill("#search", "will not score")  # the unparsable judge's raw text
        page.wait_for_function(f"document.querySelectorAll('#list li').length < {failed}")
        page.locator("#list li").first.click()
        detail = page.locator("#detail")
        assert "failed at judge" in detail.inner_text() or "failure at judge" in detail.inner_text()
        assert '<script>window.__xss=true</script>' in detail.inner_text()  # shown as text, not run
        page.fill("#search", "")
        page.select_option("#status", "kept")
        page.locator("#list li").first.click()
        assert page.locator("#detail .step").count() >= 1 and "iteration 1" in detail.inner_text()
        assert page.evaluate("window.__xss") is None, "injected markup ran"
        save(page, tmp_path / "report-failures.png")
    finally:
        context.close()
    assert not seen["dialogs"], seen["dialogs"]
    assert not seen["errors"], seen["errors"]
    assert not seen["requests"], f"the page tried the network: {seen['requests']}"


def test_report_of_a_demo_like_run(reports, browser, tmp_path):
    context, page, seen = open_report(browser, reports["demo"])
    try:
        check_charts(page)
        assert page.locator("section#failures svg.chart title").first.text_content() == "failures"
        records = page.locator("#list li").count()
        assert records >= 12
        page.locator("#list li").nth(1).click()
        assert page.locator("#detail h3").inner_text().strip()
        assert page.locator("#detail .step").count() >= 1
        page.fill("#search", "no such text anywhere 123")
        page.wait_for_function("document.querySelectorAll('#list li').length === 0")
        assert page.locator("#count").inner_text().startswith("0 of ")
        page.fill("#search", "")
        save(page, tmp_path / "report-demo.png")
    finally:
        context.close()
    assert not seen["errors"], seen["errors"]
    assert not seen["requests"], f"the page tried the network: {seen['requests']}"


def test_every_record_is_reachable_by_paging(browser, tmp_path):
    """The browser listed the first 1,000 records and no more: the rest only a search could find."""
    import json

    rows = [{"messages": [{"role": "user", "content": f"Task number {i}."}], "provenance": {"id": f"r{i:04d}"}}
            for i in range(1200)]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a folder of files (no manifest, no marker: a marked one is a run that did not finish, never reported)
    context, page, seen = open_report(browser, write_report(tmp_path, tmp_path / "report.html"))
    try:
        ids = page.locator("#list li .rid").all_text_contents()
        assert ids[0] == "r0000" and page.locator("#prev").is_disabled()
        while page.locator("#next").is_enabled():
            page.click("#next")
            ids += page.locator("#list li .rid").all_text_contents()
        assert ids == [f"r{i:04d}" for i in range(1200)]
        assert "1001-1200 listed" in page.locator("#count").inner_text()
        page.click("#prev")
        assert page.locator("#list li .rid").first.text_content() == "r0500"
    finally:
        context.close()
    assert not seen["errors"], seen["errors"]
