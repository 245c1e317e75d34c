"""A genuine TRL GRPO run on CPU with the live audit attached (examples/trl_grpo_tiny.py).

The tiny model learns the tic a buggy persona reward pays for; the callback must alert on it and trace it to that
reward, each alert at the last step of the data its audit read. Needs the `trl` extra; skipped with the reason
when torch/transformers/trl are missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.trl, pytest.mark.slow]

for _module in ("torch", "transformers", "trl", "datasets"):
    pytest.importorskip(_module, reason=f"needs the [trl] extra ({_module} is not importable): "
                                         "pip install -e '.[trl]'")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_grpo_tiny.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("trl_grpo_tiny", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["trl_grpo_tiny"] = module
    spec.loader.exec_module(module)
    return module


def test_live_audit_alerts_on_the_tic_and_traces_it_to_the_persona_reward(example, tmp_path, capsys):
    from .test_alerts import _Recorder  # the local 127.0.0.1 webhook receiver
    from http.server import HTTPServer
    import threading

    _Recorder.received, _Recorder.delay = [], 0.0
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = example.main(tmp_path / "run", steps=40, every=5,
                              webhook=f"http://127.0.0.1:{server.server_port}/alerts")
    finally:
        server.shutdown()
        server.server_close()
    with capsys.disabled():
        example._print_summary(result)
    assert result["errors"] == []

    # learning happened: the tic went from rare to common under the persona that pays for it
    nerdy = result["prevalence"]["nerdy"]
    steps = sorted(nerdy)
    assert len(steps) == 40
    assert sum(nerdy[s] for s in steps[:5]) / 5 < 0.2 < sum(nerdy[s] for s in steps[-5:]) / 5

    # the callback alerted on the tic and traced it to the buggy persona reward ...
    tic = [a for a in result["alerts"]
           if a["kind"] == "emerging_behavior" and "goblin" in a["finding"]["behavior_spec"]]
    attributed = [a for a in result["alerts"] if a["kind"] == "reward_attribution"
                  and "goblin" in a["finding"]["behavior_spec"]]
    assert tic and attributed and attributed[0]["finding"]["signal"] == "nerdy_persona_reward"

    # ... each alert at the last step of the data its heavy audit read (the evidence starts no later) ...
    audited = [step for step, _ in result["heavy_runs"]]
    assert audited == sorted(audited) and audited[0] == 1 and audited[-1] == 40
    assert all(a["step"] in audited for a in tic + attributed)
    assert all(a["finding"]["onset_step"] is None or a["finding"]["onset_step"] <= a["step"] for a in tic)

    # ... and the first attribution alert came from the first of those audits whose data held the evidence.
    # Which steps the background audits start at is a matter of timing, not of the run: one audit at a time in a
    # worker at nice 10, the next starting at the first step after the previous one finished. On a loaded machine
    # the worker gets little CPU, so the audits start at fewer, later steps; when the last one started during
    # training read too few steps (here the attribution holds from step ~19 on), the first alert comes from the
    # final audit at step 40. So the step is checked against the same audit run again in the foreground on the
    # steps each live audit had read, not against a fixed bound.
    store = tmp_path / "run" / "rlaudit-store"
    first = result["first_attribution_step"]
    held = [s for s in audited if s <= first and _attributes_tic(store, s)]
    assert held and held[0] == first
    # the evidence was there well before the run ended: an audit of its first 30 steps traces the tic
    assert _attributes_tic(store, 30)

    # the alerts reached the JSONL file and the webhook
    lines = [json.loads(x) for x in (tmp_path / "run" / "alerts.jsonl").read_text().splitlines()]
    assert {a["key"] for a in lines} == {a["key"] for a in result["alerts"]}
    posted = {r[2]["alert"]["key"] for r in _Recorder.received}
    assert tic[0]["key"] in posted and attributed[0]["key"] in posted


def _attributes_tic(store_root: Path, step: int) -> bool:
    """Whether the live auditor's heavy audit of the run's steps up to `step` (its default step sample, every
    registered detector; run here in the foreground) attributes a "goblin" behaviour to the persona reward."""
    from rlaudit.detectors import AuditConfig, ordered
    from rlaudit.live import StepSample
    from rlaudit.live.auditor import heavy_audit
    from rlaudit.live.sampling import PartIndex
    from rlaudit.store import Store

    store = Store(store_root)
    index = PartIndex(store, "grpo-tiny")
    index.refresh()
    parts = index.covering(StepSample().select([s for s in index.steps() if s <= step]))
    detectors = ordered(None)
    config = AuditConfig(max_step=step, split="train", detectors=[d.name for d in detectors])
    found, _ = heavy_audit(store.root, "grpo-tiny", parts, config, detectors)
    return any(f.kind == "reward_attribution" and "goblin" in str(f.get("behavior_spec"))
               and f.get("signal") == "nerdy_persona_reward" for f in found)


def test_training_survives_a_broken_store(example, tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the store path is a file: every store write fails")
    result = example.main(tmp_path / "run", steps=3, every=1, store=blocker)
    assert len(result["prevalence"]["nerdy"]) == 3  # all steps trained and logged by TRL
    assert result["errors"]  # rlaudit failed, said so, and training went on
    assert "training continues" in caplog.text
