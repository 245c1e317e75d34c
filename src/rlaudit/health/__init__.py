"""Training health beside behaviour: the trainers' scalar logs and the settings that fix what they show.

`scalars` reads the scalar metrics a trainer logs (TRL `trainer_state.json`, verl and prime-rl metric JSONL,
TensorBoard event files) into one long table and maps each trainer's key names onto rlaudit's metric names;
`settings` names, per trainer, the configuration key that addresses each `training_health` check. The detector
is `rlaudit.detectors.training_health`.
"""

from .scalars import METRIC_KEYS, ScalarLog, find_scalar_logs, read_scalar_logs
from .settings import SETTINGS, setting_for

__all__ = ["METRIC_KEYS", "ScalarLog", "find_scalar_logs", "read_scalar_logs", "SETTINGS", "setting_for"]
