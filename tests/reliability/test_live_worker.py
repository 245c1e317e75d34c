"""Item 1: the background audit worker must never re-execute the user's training script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(os.environ.get("RLAUDIT_TEST_SRC") or Path(__file__).resolve().parents[2] / "src")


def test_script_without_main_guard_runs_once(tmp_path):
    marker = tmp_path / "runs.txt"
    script = tmp_path / "train_unguarded.py"
    script.write_text(textwrap.dedent(f"""
        # a training script with no `if __name__ == "__main__":` guard
        import os
        with open({str(marker)!r}, "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")
        from rlaudit.live import LiveHook, LiveConfig
        hook = LiveHook({str(tmp_path / 'store')!r}, "unguarded",
                        config=LiveConfig(every=2, detectors=["reward_health"], every_step=(), background="process"))
        for step in range(6):
            hook.log_rollouts(step, ["q"] * 4, ["a goblin", "b", "c", "d"], {{"r": [1.0, 0.0, 0.0, 0.0]}})
        hook.close()
        assert not hook.errors, hook.errors
        print("heavy", len(hook.auditor.heavy_runs))
    """))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(marker.read_text().splitlines()) == 1, "the training script was executed more than once"
    assert "heavy" in out.stdout and int(out.stdout.split("heavy")[1]) >= 2, out.stdout
