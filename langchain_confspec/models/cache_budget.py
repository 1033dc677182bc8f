"""How much memory the static KV caches may take, and the rows and context that buys.

Both models' static caches are allocated once, `rows` rows each (one per generation that may
run at once) of up to `tokens` positions. Their size comes from a budget, not from the
models' windows: a Llama-3.1-8B window is 131,072 tokens, and eight rows of it would need
128 GiB. `kv_cache_memory` sets the budget in bytes, or as a fraction of the memory free on
the device after the weights; by default half of that on CUDA (the rest stays for activations
and the captured graphs' pools) and a quarter of the available memory on the CPU.

The plan keeps every row at least `USEFUL_CONTEXT` tokens (or the whole window, if smaller)
and gives up rows before it gives up context; rows cap how many calls answer at once, and a
row's length the context of a call on the static path (a call on `off` keeps the window). Where
not even one row of `MIN_CONTEXT` tokens fits, the static path is not possible and `auto`
takes `off` for that engine, saying so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from langchain_confspec.errors import ConfigurationError

USEFUL_CONTEXT = 4096
"""Rows are given up before a row's context drops below this (or the window, if smaller)."""
MIN_CONTEXT = 256
"""A row shorter than this is no use: the static path is refused instead."""
CUDA_FRACTION = 0.5
CPU_FRACTION = 0.25

KVBudget = int | float
"""`kv_cache_memory`: an int is bytes, a float in (0, 1] a fraction of the free memory (the two
are told apart at run time, so neither type stands for the other here)."""


@dataclass(frozen=True)
class CachePlan:
    """Rows, and positions per row for each model, that fit the budget."""

    rows: int
    tokens: dict[str, int]
    budget_bytes: int
    cache_bytes: int
    limited: bool
    """Whether the budget, not the windows and `max_batch`, set the plan."""

    def describe(self) -> str:
        per_model = ", ".join(f"{tokens:,} tokens for the {role}" for role, tokens in self.tokens.items())
        cut = "; the budget cut rows or context" if self.limited else ""
        return (
            f"KV cache budget {self.budget_bytes / 2**20:,.0f} MiB: {self.rows} row(s) of {per_model} "
            f"({self.cache_bytes / 2**20:,.1f} MiB{cut})"
        )


def validate_budget(setting: KVBudget | None) -> None:
    """Refuse a `kv_cache_memory` that cannot be a budget, naming it."""
    if setting is None:
        return
    if isinstance(setting, bool) or not isinstance(setting, int | float):
        raise ConfigurationError(f"kv_cache_memory must be a number of bytes or a fraction, not {setting!r}.")
    if isinstance(setting, float) and not 0.0 < setting <= 1.0:
        raise ConfigurationError(
            f"kv_cache_memory={setting}: a float is a fraction of the free device memory, in (0, 1]; "
            "pass an int for a number of bytes."
        )
    if isinstance(setting, int) and setting < 1:
        raise ConfigurationError(f"kv_cache_memory must be a positive number of bytes, not {setting}.")


def resolve_budget(setting: KVBudget | None, device: torch.device) -> int:
    """The budget in bytes: as given, or a fraction of what `device` has free now."""
    validate_budget(setting)
    if isinstance(setting, int):
        return setting
    fraction = setting if setting is not None else (CUDA_FRACTION if device.type == "cuda" else CPU_FRACTION)
    return int(fraction * free_memory(device))


def free_memory(device: torch.device) -> int:
    """Bytes free on `device` (the CPU: memory available to new allocations)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def plan_caches(per_token: dict[str, int], windows: dict[str, int], max_rows: int, budget: int) -> CachePlan | str:
    """The largest plan within `budget`: every row's context as long as its window while up to
    `max_rows` rows fit, then rows given up one by one (down to one) to keep `USEFUL_CONTEXT`, then
    context shortened; a reason string where not one row of `MIN_CONTEXT` tokens fits.

    `per_token`: bytes one position takes in each model's cache; `windows`: each model's context.
    """
    def cost(rows: int, length: int) -> int:  # + 1: each row's dump slot
        return rows * sum(size * (min(length, windows[role]) + 1) for role, size in per_token.items())

    longest = max(windows.values())
    wanted = min(longest, USEFUL_CONTEXT)
    rows = max_rows
    while rows > 1 and cost(rows, wanted) > budget:
        rows -= 1
    length = longest
    if cost(rows, length) > budget:  # the largest length that fits, found by bisection
        low, high = 0, longest
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if cost(rows, middle) <= budget else (low, middle - 1)
        length = low
    if length < min(MIN_CONTEXT, longest):
        need = cost(1, min(MIN_CONTEXT, longest))
        return (
            f"the KV cache budget ({budget / 2**20:,.1f} MiB) cannot hold one row of {min(MIN_CONTEXT, longest)} tokens "
            f"({need / 2**20:,.1f} MiB); raise kv_cache_memory or free device memory"
        )
    tokens = {role: min(length, window) for role, window in windows.items()}
    return CachePlan(
        rows=rows,
        tokens=tokens,
        budget_bytes=budget,
        cache_bytes=cost(rows, length),
        limited=rows < max_rows or any(tokens[role] < windows[role] for role in windows),
    )
