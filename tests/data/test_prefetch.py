"""Batches built ahead on background threads: same batches in the same order, bounded, no thread left behind,
and training bitwise equal with 0, 1 or 2 workers."""

from __future__ import annotations

import threading
import time

import pytest

from tiny import assert_same_training, final_state
from tiny import train_tiny
from useg.data.prefetch import QUEUE_BATCHES_PER_WORKER, Prefetcher


def batch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("useg-batches")]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_come_in_order_whatever_order_the_workers_finish_in(workers):
    def build(index: int) -> int:
        time.sleep(0.002 * (index % 3))  # later batches often finish first
        return index * index

    with Prefetcher(build, range(2, 12), workers) as ahead:
        assert list(ahead) == [(index, index * index) for index in range(2, 12)]
    assert not batch_threads()


def test_workers_stay_a_bounded_number_of_batches_ahead():
    built, handed_out = [], []

    def build(index: int) -> int:
        built.append(index)
        return index

    with Prefetcher(build, range(100), 2) as ahead:
        for index, _ in ahead:
            handed_out.append(index)
            time.sleep(0.001)
            assert len(built) <= len(handed_out) + QUEUE_BATCHES_PER_WORKER * 2
            if index == 10:
                break
    assert max(built) <= 10 + QUEUE_BATCHES_PER_WORKER * 2 and not batch_threads()


def test_an_error_building_a_batch_is_raised_where_that_batch_was_due_and_stops_the_workers():
    def build(index: int) -> int:
        if index == 5:
            raise ValueError("cannot read image 5")
        return index

    received = []
    with pytest.raises(ValueError, match="image 5"):
        with Prefetcher(build, range(20), 2) as ahead:
            for index, _ in ahead:
                received.append(index)
    assert received == [0, 1, 2, 3, 4] and not batch_threads()


def test_leaving_the_loop_early_waits_for_the_batch_being_built():
    started, release = threading.Event(), threading.Event()

    def build(index: int) -> int:
        if index == 1:
            started.set()
            release.wait(5)
        return index

    threading.Timer(0.05, release.set).start()
    with pytest.raises(KeyboardInterrupt):
        with Prefetcher(build, range(10), 1) as ahead:
            for _ in ahead:
                started.wait(5)
                raise KeyboardInterrupt  # as Ctrl+C does where StopRequest is not installed
    assert not batch_threads()


def test_training_with_0_1_and_2_workers_is_bitwise_equal(tmp_path):
    flags = ["--samples-per-epoch", "10", "--save-every-steps", "2"]
    runs = {workers: train_tiny(tmp_path / f"workers_{workers}", 1, *flags, "--data-workers", str(workers))
            for workers in (0, 1, 2)}
    states = {workers: final_state(run) for workers, run in runs.items()}
    for workers in (1, 2):
        assert_same_training(states[0], states[workers])
    assert states[2]["sampler_state"]["draw_version"] == 3 and states[2]["config"]["data_workers"] == 2
    assert not batch_threads()
