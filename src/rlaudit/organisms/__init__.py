"""Model organisms: simulated RL runs with implanted process mistakes and known ground truth.

    >>> from rlaudit.organisms import SCENARIOS, simulate
    >>> gt = simulate("goblin_persona", "runs/goblin", format="trl", seed=1)
    >>> [(i.kind, i.signal, i.onset_step) for i in gt.issues]

`simulate` trains the simulated policy on the scenario's rewards (see `simulate.run`), writes the logs in a
trainer's format (see `writers`) and `ground_truth.json`, and returns the ground truth.
"""

from __future__ import annotations

from pathlib import Path

from .groundtruth import GroundTruth, Issue
from .scenarios import SCENARIOS, Scenario
from .simulate import DEFAULT_SIZE, SimulatedRun, run
from .writers import WRITERS, write

FORMATS = tuple(WRITERS)


def simulate(scenario: str | Scenario, out_dir: str | Path, format: str = "canonical", steps: int | None = None,
             prompts: int | None = None, generations: int | None = None, seed: int = 0) -> GroundTruth:
    """Simulate `scenario` and write its logs (in `format`) and ground truth to `out_dir`."""
    if format not in WRITERS:
        from ..errors import RlauditError

        raise RlauditError(f"unknown simulator format {format!r}; choose one of {', '.join(WRITERS)}")
    sim = run(scenario, steps=steps, prompts=prompts, generations=generations, seed=seed,
              run_name=Path(out_dir).resolve().name)
    write(sim, out_dir, format)
    return sim.ground_truth


__all__ = ["simulate", "run", "write", "SCENARIOS", "Scenario", "GroundTruth", "Issue", "SimulatedRun",
           "FORMATS", "DEFAULT_SIZE"]
