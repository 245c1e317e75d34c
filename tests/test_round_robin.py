"""`memory.round_robin`: the results of producers, each a thread with its share of the jobs, in the jobs' order."""

from __future__ import annotations

import threading

import pytest

from rlaudit.memory import round_robin


@pytest.mark.parametrize("n", [1, 2, 3])
def test_results_come_in_the_jobs_order_from_one_iterator_per_producer(n):
    jobs = list(range(10))
    threads: dict[int, set[int]] = {}

    def produce(k):
        for j in jobs[k::n]:
            threads.setdefault(k, set()).add(threading.get_ident())
            yield j * j

    assert list(round_robin(produce, n, len(jobs))) == [j * j for j in jobs]
    assert all(len(t) == 1 for t in threads.values())  # each producer's share on one thread
    assert len({t for ts in threads.values() for t in ts}) == n


def test_a_producer_error_is_raised_to_the_caller_at_its_turn():
    def produce(k):
        for j in range(k, 6, 2):
            if j == 3:
                raise ValueError("job 3")
            yield j

    got = []
    with pytest.raises(ValueError, match="job 3"):
        for r in round_robin(produce, 2, 6):
            got.append(r)
    assert got == [0, 1, 2]


def test_a_producer_with_too_few_results_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="fewer results"):
        list(round_robin(lambda k: iter([k] if k == 0 else []), 2, 4))


def test_a_caller_that_stops_early_stops_the_producers():
    closed = []

    def produce(k):
        try:
            for j in range(k, 1000, 2):
                yield j
        finally:
            closed.append(k)

    results = round_robin(produce, 2, 1000)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()  # joins the producers: each had at most one result waiting
    assert sorted(closed) == [0, 1]
