"""Training health beside behaviour: the trainers' scalar logs and the settings that fix what they show.

`scalars` reads the scalar metrics a trainer logs (TRL `trainer_state.json`, verl and prime-rl metric JSONL,
TensorBoard event files (`tensorboard`), W&B run directories and history exports (`wandb_history`); `wire` is
the protobuf and record-framing decoder both use) into one long table and maps each trainer's key names onto rlaudit's metric names;
`settings` names, per trainer, the configuration key that addresses each `training_health` check. The detector
is `rlaudit.detectors.training_health`.
"""

from .scalars import METRIC_KEYS, ScalarLog, ScalarLogError, find_scalar_logs, read_scalar_logs, scalar_log_files
from .settings import SETTINGS, setting_for

__all__ = ["METRIC_KEYS", "ScalarLog", "ScalarLogError", "find_scalar_logs", "read_scalar_logs", "scalar_log_files",
           "SETTINGS", "setting_for"]
