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


def test_the_executor_sleeps_while_a_lone_request_runs_its_own_pass() -> None:
    """A pass that arrives while a request alone on the engine runs its own pass waits for it
    without spinning: a spinning executor holds the interpreter lock, and the lone pass, which
    takes it back after every operation, crawled (a 33-token pass took 1.7 s instead of 20 ms)."""
    lone_pass_seconds = 0.4

    def forward(role: str, jobs: list[PassJob]) -> list[torch.Tensor]:
        if role == "target":
            time.sleep(lone_pass_seconds)
        return [torch.zeros(1, 4) for _ in jobs]

    scheduler = BatchScheduler(2, forward)
    lone_started, lone_done = threading.Event(), threading.Event()

    def lone() -> None:
        with scheduler.slot() as (row, _):
            lone_started.set()
            scheduler.forward(PassJob("target", row, [1], 0, 1))
            lone_done.set()

    def joining() -> None:
        with scheduler.slot() as (row, _):
            scheduler.forward(PassJob("draft", row, [1], 0, 1))

    threads = [threading.Thread(target=lone), threading.Thread(target=joining)]
    threads[0].start()
    lone_started.wait(10)
    while not scheduler._executing:  # the lone request is in its own pass
        time.sleep(0.001)
    cpu = time.process_time()
    threads[1].start()
    lone_done.wait(10)
    used = time.process_time() - cpu
    for thread in threads:
        thread.join(10)
    assert used < lone_pass_seconds / 4, f"{used:.2f} s of CPU while the lone pass slept {lone_pass_seconds} s"
