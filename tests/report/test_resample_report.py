"""The resampling section of the report and its own page (`rlaudit resample compare --report`): what it shows
(rates with CIs, ratios, evidence pairs, backtest), that model text stays inert, and that a real headless
chromium draws every plot at 1400 and 800 px with words kept whole. Screenshots: test-artifacts/resample-*.png.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from rlaudit.audit import AuditResult
from rlaudit.cli import main
from rlaudit.evals import demo, run_backtest, run_resample
from rlaudit.evals.transcripts import transcript_from_record
from rlaudit.llm import LLMClient, ScriptedBackend
from rlaudit.report import build_report_html, build_resample_html, write_resample_report
from rlaudit.report.resample import discover

from .browser import BROKEN_WORDS, Browser, missing_reason
from .conftest import NASTY

HOSTILE = "<script>window.__pwned = 1</script> goblin"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """80 transcripts of the demo traffic (known rates), one whose original turn is hostile, resampled by the
    demo candidate with the tool simulated, plus a backtest against the candidate's later traffic."""
    root = tmp_path_factory.mktemp("rs")
    recs = demo.traffic(80, demo.BASE, "p")
    recs[0]["messages"][-1]["content"] = HOSTILE + " " + NASTY
    ts = [transcript_from_record(r, r["id"]) for r in recs]
    out = root / "store" / "resample" / "candidate"
    res = run_resample(ts, {"candidate": LLMClient(ScriptedBackend(demo.candidate, model="candidate"))},
                       ["goblin", "re:parser"], samples=4, out=out,
                       simulator=LLMClient(ScriptedBackend(demo.simulator)))
    later = [transcript_from_record(r, r["id"]) for r in demo.traffic(80, demo.CANDIDATE, "o")]
    bt = run_backtest(out, later)
    (out / "backtest.json").write_text(json.dumps(bt))
    return root, out, res, bt


def _rate(res, model, dim="all", cat="all", spec="goblin"):
    return next(r for r in res["rates"] if (r["model"], r["dimension"], r["category"], r["behavior"]) ==
                (model, dim, cat, spec))


def _figures(html: str) -> list[dict]:
    return json.loads(re.search(r'<script type="application/json" id="rlaudit-figures">(.*?)</script>', html,
                                re.DOTALL).group(1))


def test_page_shows_rates_ratios_evidence_and_backtest(results):
    root, out, res, bt = results
    html = build_resample_html([out])
    orig, cand = _rate(res, "original"), _rate(res, "candidate")
    # headline per behaviour: the rates and the ratio as computed by compare
    assert f"original {100 * orig['rate']:.1f}%" in html
    assert f"candidate {100 * cand['rate']:.1f}% · {cand['ratio']:.2f}x" in html
    figs = {f["id"]: f for f in _figures(html)}
    assert sorted(figs) == ["rs-b0-rate", "rs-b0-ratio", "rs-b1-rate", "rs-b1-ratio", "rs-bt0"]
    bars = {t["name"]: t for t in figs["rs-b0-rate"]["data"]}
    labels = bars["candidate"]["y"]
    assert labels[0] == "all traffic" and set(labels[1:]) == {f"task: {t}" for t in demo.BASE}
    for label, x, plus, minus in zip(labels, bars["candidate"]["x"], bars["candidate"]["error_x"]["array"],
                                     bars["candidate"]["error_x"]["arrayminus"]):
        r = _rate(res, "candidate", *(("all", "all") if label == "all traffic" else ("task", label[6:])))
        assert x == pytest.approx(r["rate"], abs=1e-5)
        assert (x + plus, x - minus) == (pytest.approx(r["ci_high"], abs=1e-5), pytest.approx(r["ci_low"], abs=1e-5))
    ratio = figs["rs-b0-ratio"]["data"][0]
    assert ratio["x"][0] == pytest.approx(cand["ratio"], rel=1e-4)
    assert figs["rs-b0-ratio"]["layout"]["xaxis"]["type"] == "log"
    # condition has one category (none): it repeats `all`, so it is not plotted; the table still lists it
    assert not any(y.startswith("condition") for y in labels) and "<td>condition</td>" in html
    # evidence: the resampled turn beside the original, the simulated tool output flagged
    assert "resampled by candidate" in html and "original turn" in html and 'class="tag-sim">simulated' in html
    assert "Done: the goblin in the parser is gone." in html and "Done: the parser is fixed." in html
    # backtest: its summary and points
    assert f"{bt['median_error']:.2f}x" in html and f"{100 * bt['directional_accuracy']:.0f}%" in html
    points = [t for t in figs["rs-bt0"]["data"] if t["mode"] == "markers"]
    assert sum(len(t["x"]) for t in points) == bt["categories"]
    # hostile model text is shown as text, never as markup
    assert "<script>window.__pwned" not in html.split("<script type=")[0]
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt; goblin" in html


def test_cli_report_and_the_audit_report_section(results, tmp_path, capsys):
    root, out, res, bt = results
    page = tmp_path / "rs.html"
    main(["resample", "compare", str(out), "--dimension", "all", "--report", str(page)])
    assert "report: " in capsys.readouterr().err and "Resampling evals" in page.read_text()
    with pytest.raises(SystemExit):
        main(["resample", "compare", str(out), "--report", str(tmp_path / "rs.txt")])
    assert "give a file name ending in .html" in capsys.readouterr().err
    # the audit report: a section when results sit beside the store (STORE/resample/NAME) or are named
    from rlaudit.store import Store

    store = Store(root / "store")
    assert discover(store.root) == [out]
    html = build_report_html(store, AuditResult(runs=[], findings=[]))
    assert '<section id="resample">' in html and "rs-b0-rate" in html
    assert '<section id="resample">' not in build_report_html(store, AuditResult(runs=[], findings=[]),
                                                             resample=[])
    assert '<section id="resample">' in build_report_html(None, AuditResult(runs=[], findings=[]), resample=[out])
    # through the CLI: `rlaudit report --resample DIR`
    findings = tmp_path / "findings.json"
    AuditResult(runs=[], findings=[]).write_json(findings)
    page = tmp_path / "audit.html"
    main(["report", "--store", str(tmp_path / "empty-store"), "--json", str(findings), "--out", str(page),
          "--resample", str(out), "--resample-baseline", "candidate"])
    html = page.read_text()
    assert '<section id="resample">' in html and "ratios are to <strong>candidate</strong>" in html


@pytest.fixture(scope="module")
def browser():
    reason = missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(f"browser tests skipped: {reason}")
    b = Browser()
    b.driver.get("about:blank")  # chromium's own start-up pages fetch chrome:// resources: let them settle
    time.sleep(1.0)
    b.driver.get_log("performance")
    yield b
    b.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("width", [1400, 800])
def test_page_in_headless_chromium(results, browser, tmp_path, width):
    root, out, res, bt = results
    page = write_resample_report([out], tmp_path / "rs.html")
    try:
        browser.driver.set_window_size(width, 1000)
        browser.open(page)
        total = browser.js("return window.rlauditRenderAll()")
        assert total == 5
        drawn = browser.wait_for("""
            var figs = Array.from(document.querySelectorAll('[data-fig]'));
            return figs.every(function (e) {
                return e.querySelector('.main-svg') && e.querySelector('.scatterlayer .trace, .barlayer .trace');
            });""")
        assert drawn
        # side by side at 1400 px, stacked at 800 px: no plot wider than its article
        widths = browser.js("""return Array.from(document.querySelectorAll('[data-fig]')).map(function (e) {
            var a = e.closest('article').getBoundingClientRect(), r = e.getBoundingClientRect();
            return [Math.round(r.width), Math.round(a.width), Math.round(r.top)]; })""")
        assert all(w <= a for w, a, _ in widths)
        rate_top, ratio_top = widths[0][2], widths[1][2]
        assert (rate_top == ratio_top) == (width == 1400)
        assert [m for m in browser.console() if m["level"] in ("SEVERE", "WARNING")] == []
        assert [u for u in browser.requests() if not u.startswith(("file://", "data:", "blob:", "about:"))] == []
        assert browser.js("return window.__pwned") is None and browser.js("return window.__dialogs") == []
        assert "<script>window.__pwned = 1</script> goblin" in browser.js("return document.body.innerText")
        assert browser.js(BROKEN_WORDS) == []
        browser.screenshot(f"resample-{width}.png")
        browser.js("document.querySelector('.resample-backtest').scrollIntoView()")
        browser.screenshot(f"resample-{width}-backtest.png")
    finally:
        browser.driver.set_window_size(1366, 900)


def test_ratio_figure_open_and_infinite_bounds():
    from rlaudit.report.resample import ratio_figure

    def row(model, cat, rate, ratio=float("nan"), lo=float("nan"), hi=float("nan")):
        return {"dimension": "task" if cat != "all" else "all", "category": cat, "behavior": "b", "model": model,
                "transcripts": 4, "samples": 4 if model == "original" else 16, "numeric": False, "rate": rate,
                "ci_low": rate, "ci_high": rate, "baseline": "original", "ratio": ratio, "ratio_low": lo,
                "ratio_high": hi}

    inf = float("inf")
    rates = [row("original", "all", 0.5), row("cand", "all", 0.6, 1.2, 0.8, 3.0),
             row("original", "x", 0.4), row("cand", "x", 0.8, 2.0, 1.1, inf),  # open upper bound
             row("original", "y", 0.0), row("cand", "y", 0.6, inf, inf, inf)]  # baseline never showed it
    fig = ratio_figure("r", "b", rates, ["original", "cand"], "original")
    [trace] = fig["data"]
    edge = 10 ** fig["layout"]["xaxis"]["range"][1]
    points = dict(zip(trace["y"], zip(trace["x"], trace["error_x"]["array"], trace["error_x"]["arrayminus"],
                                      trace["marker"]["symbol"])))
    assert points["all traffic"] == (1.2, pytest.approx(1.8), pytest.approx(0.4), "circle")
    x, plus, minus, symbol = points["task: x"]
    assert (x, minus, symbol) == (2.0, pytest.approx(0.9), "triangle-right") and x + plus == pytest.approx(edge)
    x, plus, minus, symbol = points["task: y"]
    assert (x, plus, minus, symbol) == (pytest.approx(edge), 0, 0, "triangle-right")
