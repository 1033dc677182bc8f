"""The scheduler's batching policy, on a stand-in forward that only sleeps: requests that
pass in step stay in step, and a pass of a smaller group is not passed over for long."""

from __future__ import annotations

import threading
import time

import torch

from langchain_confspec.models.batching import STARVATION_LIMIT, BatchScheduler, PassJob

FORWARD_SECONDS = 0.003


class SleepingForward:
    """A forward pass that takes `FORWARD_SECONDS` whatever its batch, recording each batch."""

    def __init__(self) -> None:
        self.batches: list[list[PassJob]] = []

    def __call__(self, role: str, jobs: list[PassJob]) -> list[torch.Tensor]:
        self.batches.append(list(jobs))
        time.sleep(FORWARD_SECONDS)
        return [torch.zeros(1, 4) for _ in jobs]


def decode(scheduler: BatchScheduler, passes: int, started: threading.Barrier) -> None:
    with scheduler.slot() as (row, _):
        started.wait()
        for position in range(passes):
            scheduler.forward(PassJob("draft", row, [1], position, 1))


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "every request finished"


def test_requests_that_pass_in_step_share_every_pass() -> None:
    """Four requests decoding together: once the executor hands back a batch, the next pass
    waits for all four (they are busy on the host from the moment their pass ended, not from
    when their threads wake), so the requests do not split into groups that take turns."""
    forward = SleepingForward()
    scheduler = BatchScheduler(4, forward)
    started = threading.Barrier(4)
    run_all([threading.Thread(target=decode, args=(scheduler, 40, started)) for _ in range(4)])
    sizes = [len(batch) for batch in forward.batches]
    assert sum(sizes) == 160
    assert sum(sizes) / len(sizes) >= 3.5, f"batch sizes {sizes}"


def test_a_lone_pass_is_not_passed_over_for_larger_groups_for_long() -> None:
    """Three requests decoding keep a larger group waiting than one request's multi-token pass;
    the pass still runs once it has waited `STARVATION_LIMIT`, long before the decoders end."""
    forward = SleepingForward()
    scheduler = BatchScheduler(4, forward)
    started = threading.Barrier(4)
    ran_after: list[float] = []

    def verify() -> None:
        with scheduler.slot() as (row, _):
            started.wait()
            time.sleep(0.02)  # the decoders are under way
            submitted = time.perf_counter()
            scheduler.forward(PassJob("target", row, [1, 2, 3], 0, 1))
            ran_after.append(time.perf_counter() - submitted)

    decoders = [threading.Thread(target=decode, args=(scheduler, 300, started)) for _ in range(3)]
    run_all([*decoders, threading.Thread(target=verify)])
    passes = [n for n, batch in enumerate(forward.batches) if batch[0].role == "target"]
    assert len(passes) == 1 and passes[0] < len(forward.batches) // 2, "the pass ran while the decoders had far to go"
    assert ran_after[0] < STARVATION_LIMIT + 0.2
