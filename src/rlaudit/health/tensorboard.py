"""TensorBoard event files as scalar logs, read by a small decoder (no tensorboard package needed).

Files are `events.out.tfevents.*` written by `torch.utils.tensorboard.SummaryWriter` (transformers'
`TensorBoardCallback` for TRL with `report_to="tensorboard"`, verl's `_TensorboardAdapter`): TFRecord framing of
`Event` protos (`wire.tfrecords`, `wire.fields`). On the fixture written by transformers' callback this returns
exactly what TensorBoard's own `EventAccumulator` returns (tests/detectors/test_training_health.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from .wire import fields, tfrecords


def _tensor_value(buf: bytes) -> float | None:
    """A scalar TensorProto (DT_FLOAT = 1 or DT_DOUBLE = 2): float_val / double_val / tensor_content."""
    dtype, content = 1, None
    for num, wire, val in fields(buf):
        if num == 1 and wire == 0:
            dtype = val
        elif num == 4 and wire == 2:
            content = val
        elif num == 5:
            return struct.unpack("<f", val[:4])[0] if wire == 2 else struct.unpack("<f", val)[0]
        elif num == 6:
            return struct.unpack("<d", val[:8])[0] if wire == 2 else struct.unpack("<d", val)[0]
    if content:
        return struct.unpack("<d" if dtype == 2 else "<f", content[:8 if dtype == 2 else 4])[0]
    return None


def read_tfevents(path: str | Path) -> Iterator[tuple[int, str, float]]:
    """Scalars of a TensorBoard event file: `Event` protos (`step` = field 2, `summary` = field 5 holding
    `Value`s: `tag` = 1, `simple_value` = 2, `tensor` = 8). A truncated last record (a file being written) ends
    the read."""
    for event in tfrecords(Path(path).read_bytes()):
        step, summary = 0, None
        for num, wire, val in fields(event):
            if num == 2 and wire == 0:
                step = val
            elif num == 5 and wire == 2:
                summary = val
        if summary is None:
            continue
        for num, wire, val in fields(summary):
            if num != 1 or wire != 2:
                continue
            tag, value = None, None
            for vnum, vwire, vval in fields(val):
                if vnum == 1 and vwire == 2:
                    tag = vval.decode("utf-8", "replace")
                elif vnum == 2 and vwire == 5:
                    value = struct.unpack("<f", vval)[0]
                elif vnum == 8 and vwire == 2:
                    value = _tensor_value(vval)
            if tag is not None and value is not None:
                yield int(step), tag, float(value)
