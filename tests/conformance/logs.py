"""Where the conformance tests find each trainer's logs.

`$RLAUDIT_CONFORMANCE_DIR/<trainer>` when CI (or `scripts/conformance.sh`) regenerated them there with the
trainer's own code; else the committed copy in `tests/conformance/fixtures/<trainer>` (written by the same
generator). A trainer whose generator cannot run on this machine (NeMo RL needs a source checkout) is skipped by
the script and read from its fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def trainer_logs(trainer: str) -> Path:
    fresh = os.environ.get("RLAUDIT_CONFORMANCE_DIR")
    if fresh and (Path(fresh) / trainer / ".complete").is_file():
        return Path(fresh) / trainer
    return FIXTURES / trainer
