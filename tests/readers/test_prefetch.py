"""`readers.base.prefetch`, the queue between ingest's stages: items in order, errors where they occurred, at most
`depth` items and `max_bytes` of tables waiting (one always may), and the producer stopped when the consumer
leaves."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.readers.base import _tables_held, _Waiting, prefetch


def _table(rows: int) -> pa.Table:
    return pa.table({"x": pa.array(range(rows), pa.int64())})


class _Producer:
    """Items `(name, table)` of the given row counts; counts how many were produced."""

    def __init__(self, rows: list[int]):
        self.rows, self.made = rows, 0
        self.lock = threading.Lock()

    def __iter__(self):
        for i, n in enumerate(self.rows):
            with self.lock:
                self.made += 1
            yield (f"f{i}", _table(n))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 300), min_size=0, max_size=25), depth=st.integers(1, 6),
       cap_rows=st.one_of(st.none(), st.integers(0, 600)))
def test_items_in_order_and_never_more_waiting_than_depth_and_bytes(rows, depth, cap_rows):
    max_bytes = None if cap_rows is None else cap_rows * 8  # int64: 8 bytes a row
    producer = _Producer(rows)
    got = []
    for i, item in enumerate(prefetch(iter(producer), depth, max_bytes)):
        time.sleep(0.002)  # let the producer run ahead as far as it may
        with producer.lock:
            ahead = producer.made - (i + 1)  # produced, not yet handed to this loop
        waiting = rows[i + 1:i + 1 + ahead]
        # the queue holds `depth` items; the producer may hold one more it could not yet put
        assert ahead <= depth + 1
        queued = waiting[:-1]  # at least these wait in the queue (the producer may hold the last one made)
        # one table always may wait, whatever its size; a table of no rows holds no bytes, so it adds none and
        # may wait beside it
        if max_bytes is not None and sum(1 for n in queued if n) > 1:
            assert sum(n * 8 for n in queued) <= max_bytes
        got.append(item)
    assert [name for name, _ in got] == [f"f{i}" for i in range(len(rows))]
    assert [t.num_rows for _, t in got] == rows


def test_a_table_larger_than_the_bound_still_passes_one_at_a_time():
    producer = _Producer([1000] * 5)
    out = []
    for name, table in prefetch(iter(producer), 4, max_bytes=100):
        time.sleep(0.01)
        with producer.lock:
            assert producer.made - (len(out) + 1) <= 2  # one in the queue, one held by the producer
        out.append(name)
    assert out == [f"f{i}" for i in range(5)]


def test_an_error_is_raised_where_it_occurred_and_a_closed_consumer_stops_the_producer():
    def failing():
        yield ("a", _table(3))
        raise ValueError("bad file")

    stream = prefetch(failing(), 4, max_bytes=1 << 20)
    assert next(stream)[0] == "a"
    with pytest.raises(ValueError, match="bad file"):
        next(stream)
    producer = _Producer([10] * 1000)
    stream = prefetch(iter(producer), 2, max_bytes=8 * 10)
    next(stream)
    stream.close()  # joins the producer thread
    assert producer.made < 10


def test_bytes_of_items():
    t = _table(4)
    ((_, size),) = _tables_held(t)
    assert size == t.nbytes == 32
    assert [s for _, s in _tables_held(("file", t))] == [32]
    assert _tables_held(("file", None)) == [] and _tables_held(3) == []


def test_slices_of_one_table_count_its_buffers_once():
    """Readers hand on slices of one table (a batch of small files): what waits is the table's buffers, once."""
    whole, other = _table(100), _table(100)
    waiting = _Waiting()
    slices = [_tables_held(("f", whole.slice(i * 10, 10))) for i in range(10)]
    assert waiting.added(slices[0]) == 800
    for held in slices:
        waiting.add(held)
    assert waiting.bytes == 800 and waiting.items == 10
    assert waiting.added(_tables_held(("g", other))) == 800  # another table counts its own
    for held in slices[:9]:
        waiting.remove(held)
    assert waiting.bytes == 800 and waiting.items == 1  # a slice still waits: the table is still held
    waiting.remove(slices[9])
    assert waiting.bytes == 0 and waiting.items == 0 and not waiting.held


def test_slices_of_a_waiting_table_pass_the_byte_bound():
    """With one table's slices waiting, more of its slices pass however tight the bound (they hold no more
    memory), and another table waits for room."""
    whole = _table(1000)
    items = [(f"s{i}", whole.slice(i * 100, 100)) for i in range(10)] + [("other", _table(1000))]
    made = []

    def producer():
        for item in items:
            made.append(item[0])
            yield item

    stream = prefetch(producer(), 20, max_bytes=4_000)  # half the table's 8,000 bytes
    first = next(stream)
    time.sleep(0.2)  # the producer runs ahead as far as the bound lets it
    assert first[0] == "s0" and made == [name for name, _ in items]  # every slice queued, "other" made
    assert [name for name, _ in stream] == [f"s{i}" for i in range(1, 10)] + ["other"]
