"""The report in a real headless chromium: loads offline without console errors, draws its plots, keeps model
text inert, filters work. Screenshots go to test-artifacts/report-*.png."""

from __future__ import annotations

import os

import pytest

from rlaudit.report import write_report

from .browser import BROKEN_WORDS, Browser, missing_reason

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_MISSING = missing_reason()


@pytest.fixture(scope="module")
def browser():
    if _MISSING:
        if os.environ.get("CI"):  # .ci/run installs chromium: a missing browser there is a broken CI, not a skip
            pytest.fail(f"browser tests cannot run in CI: {_MISSING}")
        pytest.skip(f"browser tests skipped: {_MISSING}")
    b = Browser()
    yield b
    b.close()


@pytest.fixture
def report(tmp_path, report_store, result):
    return write_report(report_store, result, tmp_path / "report.html")


def _plots_drawn(browser) -> tuple[int, int]:
    return browser.js("""
        var figs = Array.from(document.querySelectorAll('[data-fig]'));
        var drawn = figs.filter(function (e) {
            return e.querySelector('.main-svg') && e.querySelector('.scatterlayer .trace, .barlayer .trace');
        });
        return [drawn.length, figs.length];""")


def test_report_loads_offline_draws_plots_and_keeps_payloads_inert(browser, report, result):
    browser.open(report)
    browser.screenshot("report-top.png")
    total = browser.js("return window.rlauditRenderAll()")
    assert total >= 6  # reward curves + prevalence, shares, attribution, exposure, per-condition, generic
    drawn = browser.wait_for("""
        var figs = Array.from(document.querySelectorAll('[data-fig]'));
        return figs.every(function (e) {
            return e.querySelector('.main-svg') && e.querySelector('.scatterlayer .trace, .barlayer .trace');
        });""")
    n_drawn, n_figs = _plots_drawn(browser)
    assert drawn, f"plotly drew {n_drawn} of {n_figs} figures"
    assert n_drawn == n_figs == total

    errors = [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    outside = [u for u in browser.requests() if not u.startswith(("file://", "data:", "blob:", "about:"))]
    assert outside == []

    # Hostile model text stayed text: nothing ran, no dialog opened, no injected elements exist.
    assert browser.js("return window.__pwned") is None
    assert browser.js("return window.__dialogs") == []
    assert browser.js("return document.scripts.length") == 4
    assert browser.js("return document.querySelectorAll('img').length") == 0
    body_text = browser.js("return document.body.innerText")
    assert "<script>window.__pwned = 1" in body_text  # shown, as text

    # The exposed span is highlighted in what the grader saw.
    marks = browser.js("return Array.from(document.querySelectorAll('mark')).map(function (m) { "
                       "return m.textContent; })")
    assert any("The goblin says 2 plus 2 is 4." in m for m in marks)

    browser.js("document.getElementById('finding-0').scrollIntoView()")
    browser.screenshot("report-finding.png")
    browser.screenshot("report-full.png", full_page=True)


def test_filters_hide_findings_by_severity_kind_and_run(browser, report, result):
    browser.open(report)
    visible = """return Array.from(document.querySelectorAll('article.finding'))
                 .filter(function (e) { return e.offsetParent !== null; }).length"""
    assert browser.js(visible) == len(result.findings)
    browser.js("var s = document.getElementById('filter-severity'); s.value = '3';"
               "s.dispatchEvent(new Event('change'))")
    assert browser.js(visible) == sum(f.severity == "high" for f in result.findings)
    browser.js("var s = document.getElementById('filter-kind'); s.value = 'cot_grading';"
               "s.dispatchEvent(new Event('change'))")
    assert browser.js(visible) == 1
    assert "showing 1 of" in browser.js("return document.getElementById('filter-count').textContent")
    browser.js("var s = document.getElementById('filter-run'); s.value = 'grpo-b';"
               "s.dispatchEvent(new Event('change'))")
    assert browser.js(visible) == 0  # grpo-b has no CoT-grading finding
    browser.js("var s = document.getElementById('filter-kind'); s.value = '';"
               "s.dispatchEvent(new Event('change'));"
               "s = document.getElementById('filter-severity'); s.value = '0';"
               "s.dispatchEvent(new Event('change'))")
    assert browser.js(visible) == sum(f.run == "grpo-b" for f in result.findings) == 1
    runs_shown = browser.js("""return Array.from(document.querySelectorAll('#runs tbody tr'))
        .filter(function (e) { return e.offsetParent !== null; }).map(function (e) { return e.dataset.run; })""")
    assert runs_shown == ["grpo-b"]


@pytest.mark.parametrize("width", [1400, 800])
def test_words_are_not_broken_inside_at_reading_widths(browser, report, width):
    """Issue 19: at 800 px the overview broke run names inside words ('gobli n-perso na-trl')."""
    browser.driver.set_window_size(width, 1000)
    try:
        browser.open(report)
        browser.screenshot(f"report-{width}.png")
        assert browser.js(BROKEN_WORDS) == []
    finally:
        browser.driver.set_window_size(1366, 900)
