"""The `cot_grading` detector: which graders saw the policy's chain-of-thought, how often, since when.

Two methods, both emitting findings of kind `cot_grading`:

- `scan` (`cot_scan.py`): direct evidence. Where grader inputs are logged (or captured with `rlaudit.capture`),
  look for the rollout's reasoning inside them. Severity high by default: any exposure is a training bug.
- `screen` (`cot_screen.py`): statistical evidence from scores alone, for graders whose input is unknown. Within a
  prompt group, rollouts with identical answers should get identical scores from a grader that reads only the
  answer; a score difference that tracks the reasoning is suspicious. Severity low/medium, labelled as
  statistical. Graders covered by the scan are not screened.

Options (`AuditConfig.options["cot_grading"]`): the `ScanParams` fields (k, min_matched, min_containment,
min_span, group_context), `min_exposed` (exposed rollouts needed for a finding, default 1), `severity`
(default "high"), `max_evidence` (5), `screen` (default True), `screen_alpha` (FDR level, 0.05).
"""

from __future__ import annotations

from ..findings import Finding
from . import DetectContext, Detector, register
from .cot_scan import ScanParams, findings_from_results, scan_run
from .cot_screen import screen


@register
class CotGradingDetector(Detector):
    name = "cot_grading"
    kinds = ("cot_grading",)
    description = "Graders that saw the reasoning: scan of logged grader inputs, plus a statistical screen."

    def detect(self, ctx: DetectContext) -> list[Finding]:
        options = ctx.config.options.get(self.name, {})
        params = ScanParams.from_options(options)
        con = ctx.connect()
        captured = _captured(ctx)
        key = f"cot_scan-{params.cache_key()}" + (f"-{captured[1]}" if captured else "")
        extra = captured[0] if captured else None
        results = ctx.store.derived(ctx.run, key, lambda: scan_run(con, params, "all_rollouts", extra))
        where = ["TRUE"]
        if ctx.config.max_step is not None:
            where.append(f"step <= {int(ctx.config.max_step)}")
        if ctx.config.split:
            where.append(f"split = '{ctx.config.split}'")
        found = findings_from_results(con, results, ctx.run, params, " AND ".join(where), options,
                                      evidence_source="rollouts", extra_inputs=extra)
        if options.get("screen", True):
            scanned = set(con.execute("SELECT DISTINCT grader FROM cot_scan").fetchnumpy()["grader"].tolist())
            found += screen(con, ctx.run, options, skip_signals=scanned, seed=ctx.config.seed)
        con.close()
        return found


def _captured(ctx: DetectContext) -> tuple[str, str] | None:
    """Path and version tag of captured grader inputs merged into this run, if any."""
    from ..capture import captured_inputs_path

    path = captured_inputs_path(ctx.store, ctx.run)
    if not path.is_file():
        return None
    st = path.stat()
    return str(path), f"{st.st_size:x}{st.st_mtime_ns:x}"[-12:]
