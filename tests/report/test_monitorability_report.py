"""The monitorability section of the report: g-mean² per view over step windows with CIs, the verbalisation
rate, the exposure cells, the onset marked and the verdict in the title; drawn in headless chromium at 1400 and
800 px without overflowing the page."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rlaudit.audit import audit_store
from rlaudit.detectors import AuditConfig
from rlaudit.report import write_report
from rlaudit.report.figures import figures_for
from rlaudit.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm.organisms import organism  # noqa: E402

from .browser import Browser, missing_reason  # noqa: E402

OPTIONS = {"monitorability": {"label": "hardcode", "n_boot": 200}}


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mon")
    store = Store(tmp / "store")
    store.append("hidden", organism("hidden"), "p1")
    result = audit_store(store, ["hidden"], AuditConfig(detectors=["cot_grading", "monitorability"],
                                                        options=OPTIONS))
    return store, result, tmp


def test_monitorability_figures(hidden):
    _, result, _ = hidden
    [f] = result.of_kind("monitorability")
    figs = {fig["id"].rsplit("-", 1)[1]: fig for fig in figures_for(f, "m")}
    assert set(figs) == {"views", "verbal", "cells"}
    views = figs["views"]
    assert [t["name"] for t in views["data"]] == ["CoT only", "action only", "all messages"]
    assert all("error_y" in t and len(t["error_y"]["array"]) == len(t["x"]) for t in views["data"])
    assert "verdict: drop" in views["layout"]["title"]["text"]
    assert views["layout"]["shapes"][0]["x0"] == 5  # the exposure onset
    cot = views["data"][0]["y"]
    assert cot[0] > 0.6 and cot[-1] < cot[0]  # verbalisation fell where exposed
    cells = figs["cells"]
    assert [t["name"] for t in cells["data"]] == ["unexposed", "exposed"]
    assert "DiD -" in cells["layout"]["title"]["text"]
    assert figs["verbal"]["layout"]["shapes"][0]["x0"] == 5


_MISSING = missing_reason()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("width", [1400, 800])
def test_monitorability_section_in_chromium(hidden, width):
    if _MISSING:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {_MISSING}")
        pytest.skip(f"browser tests skipped: {_MISSING}")
    store, result, tmp = hidden
    html = write_report(store, result, tmp / f"report-{width}.html")
    browser = Browser()
    try:
        browser.driver.set_window_size(width, 1000)
        browser.open(html)
        browser.js("return window.rlauditRenderAll()")
        ids = ["-views", "-verbal", "-cells"]
        drawn = browser.wait_for("""
            var figs = Array.from(document.querySelectorAll('[data-fig]')).filter(function (e) {
                var id = e.getAttribute('data-fig') || e.id || '';
                return /-(views|verbal|cells)$/.test(id); });
            return figs.length === 3 && figs.every(function (e) {
                return e.querySelector('.main-svg') && e.querySelector('.scatterlayer .trace, .barlayer .trace'); });
            """)
        assert drawn, ids
        # error bars drawn, the onset line and the verdict visible, nothing wider than the window
        assert browser.js("return document.querySelectorAll('.errorbar').length") > 0
        text = browser.js("return document.body.innerText")
        assert "verdict: drop" in text and "CoT exposure from step 5" in text
        assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        errors = [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        browser.js("var e = document.querySelector('[data-fig$=\"-views\"]'); if (e) e.scrollIntoView()")
        browser.screenshot(f"report-monitorability-{width}.png")
    finally:
        browser.close()
