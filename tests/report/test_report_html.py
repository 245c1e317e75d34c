"""The HTML report as a document: self-contained, escaped, bounded, and complete for one run or a fleet."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser

import pytest

from rlaudit.audit import AuditResult
from rlaudit.findings import Evidence, Finding, jsonable
from rlaudit.report import ReportLimits, build_report_html, write_report
from rlaudit.report.data import TOTAL, condition_counts, fetch_rollouts, reward_curves

from .conftest import END_SCRIPT, IMG, REASONING, SCRIPT, STEPS


class Doc(HTMLParser):
    """Every element with its attributes, script contents, and the page's text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.text: list[str] = []
        self._script: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag == "script":
            self._script = attrs
            self.scripts.append((attrs, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.text.append(data)


@pytest.fixture
def html(report_store, result) -> str:
    return build_report_html(report_store, result)


def test_payloads_in_titles_and_completions_only_appear_escaped(html):
    doc = Doc(html)
    # Exactly the report's own scripts: two JSON data blocks, plotly and the app script.
    assert [a.get("type") for a, _ in doc.scripts] == ["application/json", "application/json", None, None]
    assert [a.get("id") for a, _ in doc.scripts][:2] == ["rlaudit-figures", "rlaudit-template"]
    assert not [t for t, _ in doc.elements if t in ("img", "iframe", "object", "embed", "link", "base")]
    assert not [(t, k) for t, a in doc.elements for k in a if k.startswith("on")]
    text = "".join(doc.text)
    for payload in (SCRIPT, IMG, "</script><script>window.__pwned = 3</script><!--"):
        assert payload in text  # shown to the reader, as text
    assert "&lt;script&gt;window.__pwned = 1" in html
    assert "\x00" not in html and "\ud800" not in html


def test_embedded_json_cannot_end_its_script_block_and_parses(html):
    doc = Doc(html)
    for attrs, body in doc.scripts[:2]:
        assert "</script" not in body.lower() and "<!--" not in body
        json.loads(body)
    figures = json.loads(doc.scripts[0][1])
    titles = json.dumps(figures)
    assert "window.__pwned" in titles  # the payload is in there, but as escaped data
    ids = {f["id"] for f in figures}
    referenced = {a["data-fig"] for t, a in doc.elements if "data-fig" in a}
    assert referenced == ids


def test_content_security_policy_allows_only_the_reports_own_scripts_and_no_network(html):
    doc = Doc(html)
    csp = next(a["content"] for t, a in doc.elements
               if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    for _, body in doc.scripts[2:]:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html.split("<script>")[0])


def test_report_lists_every_run_and_finding_ranked(html, result):
    doc = Doc(html)
    articles = [a for t, a in doc.elements if t == "article"]
    assert [a["data-kind"] for a in articles] == [f.kind for f in result.findings]
    assert [int(a["data-severity"]) for a in articles] == sorted((int(a["data-severity"]) for a in articles),
                                                                 reverse=True)
    run_rows = [a["data-run"] for t, a in doc.elements if t == "tr" and "data-run" in a and "data-kind" not in a]
    assert run_rows == ["grpo-a", "grpo-b"]
    figures = json.loads(doc.scripts[0][1])
    assert {"run-0-rewards", "run-1-rewards"} <= {f["id"] for f in figures}
    health = [i for i, f in enumerate(result.findings) if f.kind == "reward_health"]
    titles = {f["id"]: f["layout"]["title"]["text"] for f in figures}
    assert all(titles[f"f{i}-signal"] == "Mean of persona per step (where it applies)" for i in health)


def test_exposed_span_is_highlighted_and_long_texts_are_cut(html):
    marks = re.findall(r"<mark>(.*?)</mark>", html, flags=re.S)
    assert REASONING in marks
    # the 50,000-character reasoning of rollout s15-1 is cut to the 20,000-character cap with a visible note
    assert f"{50_000 + len(SCRIPT) - 20_000:,} more characters not included" in html


def test_reward_curves_average_only_where_a_signal_applies(report_store):
    curves = reward_curves(report_store, ["grpo-a"], max_points=500)["grpo-a"]
    assert list(curves) == ["correctness", "persona", TOTAL]
    x, y = curves["correctness"]
    assert x == list(range(STEPS)) and y == [1.0] * STEPS
    _, persona = curves["persona"]  # NaN outside the nerdy condition: averaged over nerdy rollouts only
    assert all(v in (0.0, 0.5, 1.0) for v in persona)
    x, _ = reward_curves(report_store, ["grpo-a"], max_points=5)["grpo-a"]["correctness"]
    assert len(x) == 5


def test_condition_counts_and_rollout_lookup(report_store):
    assert condition_counts(report_store, ["grpo-a"]) == {"grpo-a": {"default": 120, "nerdy": 40}}
    rows = fetch_rollouts(report_store, "grpo-a", ["s15-1", "missing"], text_cap=100)
    assert set(rows) == {"s15-1"}
    row = rows["s15-1"]
    assert len(row["reasoning"]) == 100 and row["reasoning_len"] == 50_000 + len(SCRIPT)
    assert row["rewards"] == {"correctness": 1.0, "persona": 1.0} and "usefulness" in row["grader_inputs"]
    assert fetch_rollouts(report_store, "no-such-run", ["x"], 10) == {}
    assert fetch_rollouts(None, "grpo-a", ["s1-1"], 10) == {}


def test_report_without_a_store_shows_what_the_findings_carry(result):
    html = build_report_html(None, result)
    assert "rollout not in the store" in html
    assert "Reward components" not in html and "Mean of persona" not in html
    assert REASONING in re.findall(r"<mark>(.*?)</mark>", html, flags=re.S)  # carried in the evidence itself


def test_findings_json_round_trip_with_lone_surrogate_escapes(tmp_path, report_store, result):
    path = tmp_path / "findings.json"
    # ensure_ascii writes the lone surrogates of the sample evidence as "\ud800" escapes, as other tools may
    path.write_text(json.dumps(jsonable(result.to_json()), ensure_ascii=True), encoding="utf-8")
    assert "\\ud800" in path.read_text(encoding="utf-8")
    out = write_report(report_store, AuditResult.read_json(path), tmp_path / "r.html")
    out.read_text(encoding="utf-8")  # valid UTF-8


def test_evidence_and_findings_are_capped(report_store):
    many = [Finding("emerging_behavior", "grpo-a", "low", f"tic {i}", fields={"behavior": f"t{i}"},
                    evidence=[Evidence(f"s{s}-0", s) for s in range(STEPS)]) for i in range(12)]
    result = AuditResult(runs=[report_store.summary("grpo-a")], findings=many)
    html = build_report_html(report_store, result, limits=ReportLimits(max_evidence=3, max_detailed=10))
    doc = Doc(html)
    assert len([a for t, a in doc.elements if t == "article"]) == 10
    assert html.count('class="evidence"') == 30
    assert "(3 of 20 shown)" in html
    assert "The 2 lowest-ranked findings are listed above only" in html


def test_megabyte_texts_keep_the_report_small(report_store):
    huge = "A" * 3_000_000 + END_SCRIPT
    findings = [Finding("mystery_kind", "grpo-a", "high", huge[:1000], explanation=huge,
                        fields={"blob": huge, "series": {"steps": list(range(100_000)),
                                                         "level": [float(i % 10) for i in range(100_000)]}},
                        evidence=[Evidence("s1-1", 1, text=huge, note=huge, data={"grader_input": huge,
                                                                                  "span": [2_999_990, 3_000_010]})])]
    result = AuditResult(runs=[report_store.summary("grpo-a")], findings=findings)
    html = build_report_html(report_store, result)
    plotly_size = 5_000_000
    assert len(html.encode()) - plotly_size < 300_000
    figures = json.loads(Doc(html).scripts[0][1])
    series = next(f for f in figures if f["id"].endswith("series"))
    assert len(series["data"][0]["x"]) <= 500
    assert "<mark>AAAAAAAAAA&lt;/script&gt;&lt;</mark>" in html  # the span, cut out of 3 MB


def test_empty_audit_renders(report_store):
    html = build_report_html(report_store, AuditResult(runs=[report_store.summary("grpo-a")], findings=[]))
    assert "No findings" in html


def test_rollout_lookup_by_step_finds_the_same_rows(report_store):
    ids = ["s3-1", "s15-1", "s19-7"]
    by_step = fetch_rollouts(report_store, "grpo-a", ids, 100, steps=[3, 15, 19])
    assert set(by_step) == set(ids)
    assert {i: r["answer"] for i, r in by_step.items()} == {
        i: r["answer"] for i, r in fetch_rollouts(report_store, "grpo-a", ids, 100).items()}
    assert fetch_rollouts(report_store, "grpo-a", ids, 100, steps=[4]) == {}


def test_run_notes_are_shown_escaped_under_the_runs_table(report_store, result):
    """What a reader assumed (ReadContext.note) is part of reading the numbers: the report shows it per run."""
    result.runs[0].notes = ["reward weights not logged; `reward` is the unweighted sum <script>x</script>"]
    html = build_report_html(report_store, result)
    doc = Doc(html)
    notes = [a for tag, a in doc.elements if tag == "div" and "run-notes" in (a.get("class") or "")]
    assert [a["data-run"] for a in notes] == ["grpo-a"]
    assert "reward weights not logged; `reward` is the unweighted sum <script>x</script>" in "".join(doc.text)
    assert "<script>x</script>" not in html


# ------------------------------------------- the templates' compiled code (`report._env`, `report._TemplateCache`)
def _fixed(result) -> str:
    import datetime as dt

    return build_report_html(None, result, now=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))


def test_templates_are_compiled_once_per_process_and_then_read_from_their_cache(tmp_path, monkeypatch, result):
    """Within a process the environment and its templates are kept; a new process (a cleared environment) reads
    their compiled code from the cache directory instead of compiling them again; the page is the same."""
    import jinja2

    from rlaudit import report

    compiled: list[str] = []
    compile_ = jinja2.Environment.compile

    def spy(self, source, name=None, *a, **k):
        compiled.append(name)
        return compile_(self, source, name, *a, **k)

    monkeypatch.setattr(jinja2.Environment, "compile", spy)
    monkeypatch.setattr(report._TemplateCache, "made", classmethod(lambda cls: cls(str(tmp_path))))
    report._env.cache_clear()
    try:
        first = _fixed(result)
        once = list(compiled)  # the page and the templates it includes, once each
        assert "report.html.j2" in once and len(set(once)) == len(once)
        assert _fixed(result) == first and compiled == once
        assert len(list(tmp_path.glob("__jinja2_*.cache"))) == len(once)
        report._env.cache_clear()  # as a new process
        assert _fixed(result) == first and compiled == once
    finally:
        report._env.cache_clear()


@pytest.mark.parametrize("damage", ["not a directory", "disk full", "garbled entry", "truncated entry"])
def test_a_template_cache_that_cannot_be_used_leaves_the_report_as_it_is(tmp_path, monkeypatch, result, damage):
    from rlaudit import report

    report._env.cache_clear()
    monkeypatch.setattr(report._TemplateCache, "made", classmethod(lambda cls: None))
    expected = _fixed(result)  # no cache at all
    where = tmp_path / "cache"
    where.mkdir()
    if damage in ("garbled entry", "truncated entry"):
        report._env.cache_clear()
        monkeypatch.setattr(report._TemplateCache, "made", classmethod(lambda cls: cls(str(where))))
        _fixed(result)  # writes the entry
        for entry in where.glob("__jinja2_*.cache"):  # the page's and its includes'
            data = entry.read_bytes()
            entry.write_bytes(data[:40] if damage == "truncated entry" else data[:20] + b"\x00garbage" * 9)
    elif damage == "disk full":
        import tempfile

        def full(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    else:
        where = tmp_path / "a file"
        where.write_text("")
    report._env.cache_clear()
    monkeypatch.setattr(report._TemplateCache, "made", classmethod(lambda cls: cls(str(where))))
    try:
        assert _fixed(result) == expected
        assert _fixed(result) == expected
    finally:
        report._env.cache_clear()
