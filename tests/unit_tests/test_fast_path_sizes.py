"""The fast path at real model sizes, proven on the CPU: every write stays in its row whatever
the mix of jobs, positions stay in range, a KV memory budget sizes the caches, attention follows
the live context, keys are written in place, and failures leave a usable engine or a clear end."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from langchain_confspec import ConfSpecEngine, wrap_model
from langchain_confspec.config import build_config
from langchain_confspec.engine.decoding import TokenChooser
from langchain_confspec.errors import (
    ConfigurationError,
    ContextLengthError,
    DeviceContextLostError,
    GenerationError,
    ModelOutOfMemoryError,
)
from langchain_confspec.models.batching import PassJob
from langchain_confspec.models.cache_budget import (
    MIN_CONTEXT,
    USEFUL_CONTEXT,
    plan_caches,
)
from langchain_confspec.models.cuda_graphs import (
    CudaGraphCapture,
    EagerRehearsal,
    graph_memory,
)
from langchain_confspec.models.loading import LoadedModel
from langchain_confspec.models.static_runner import (
    ATTEND_BASE,
    PASS_BUCKETS,
    StaticRunner,
    attend_buckets,
)
from langchain_confspec.models.tiny import build_tokenizer

TOKENIZER = build_tokenizer()
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]


def qwen(window: int, *, seed: int = 0, layers: int = 2) -> LoadedModel:
    config = Qwen2Config(
        vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window,
    )
    torch.manual_seed(seed)
    return wrap_model(Qwen2ForCausalLM(config).eval(), TOKENIZER, role="target", name=f"qwen-{window}")


def alone(loaded: LoadedModel, tokens: list[int], prefix: list[int], n_rows: int) -> torch.Tensor:
    """What a pass of `tokens` after `prefix` gives without any cache: the reference."""
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([[*prefix, *tokens]])).logits[0, -n_rows:].float()


def tokens(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(5, len(TOKENIZER)) for _ in range(n)]


# -- no write outside a row --------------------------------------------------------------------------


def test_the_review_reproduction_a_long_prompt_beside_a_row_near_its_end() -> None:
    """A 600-token prompt in row 0 and a 2-token pass at position 1000 in row 1 of a 1,280-slot
    cache: the short job used to be padded to 600 tokens and written to slot 1599."""
    loaded = qwen(1280)
    runner = StaticRunner(loaded, 1280, EagerRehearsal(), rows=2)
    rng = random.Random(0)
    history, prompt = tokens(1000, rng), tokens(600, rng)
    runner.forward_rows([PassJob("t", 1, history, 0, 1)])  # row 1 holds 1000 tokens
    long_prompt, catch_up = PassJob("t", 0, prompt, 0, 1), PassJob("t", 1, [7, 8], 1000, 2)
    out = runner.forward_rows([long_prompt, catch_up])
    torch.testing.assert_close(out[0], alone(loaded, prompt, [], 1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], alone(loaded, [7, 8], history, 2), rtol=1e-4, atol=1e-4)


def _snapshot(runner: StaticRunner) -> torch.Tensor:
    return torch.stack([layer.keys.clone() for layer in runner.cache.layers])  # (layers, rows, heads, slots, dim)


@pytest.mark.parametrize("graphs", [False, True], ids=["static", "rehearsed-graphs"])
def test_random_mixes_of_jobs_write_only_their_own_slots_and_answer_as_alone(graphs: bool) -> None:
    window, rows = 400, 4
    loaded = qwen(window, layers=1)
    runner = StaticRunner(loaded, window, EagerRehearsal(), rows=rows)
    if graphs:
        runner.warm_up_graphs()
    rng = random.Random(1)
    contexts: list[list[int]] = [[] for _ in range(rows)]
    for _ in range(25):
        jobs = []
        for row in rng.sample(range(rows), rng.randint(1, rows)):
            room = window - len(contexts[row])
            rollback = rng.randint(0, min(5, len(contexts[row])))  # a rejected step: start earlier
            start = len(contexts[row]) - rollback
            length = min(rng.choice([1, 1, 2, 7, 9, 33, PASS_BUCKETS[-1] + 20]), room + rollback)
            if length < 1:
                contexts[row] = []
                start, length = 0, rng.randint(1, 40)
            jobs.append(PassJob("t", row, tokens(length, rng), start, rng.randint(1, min(length, 3)), graphs))
        before = _snapshot(runner)
        outputs = runner.forward_rows(jobs)
        after = _snapshot(runner)
        changed = (before != after).any(dim=(0, 2, 4))  # (rows, slots)
        for row in range(rows):
            job = next((j for j in jobs if j.row == row), None)
            allowed = torch.zeros(window + 1, dtype=torch.bool)
            allowed[window] = True  # the dump slot
            if job is not None:
                allowed[job.start : job.start + len(job.tokens)] = True
            assert not (changed[row] & ~allowed).any(), f"row {row} written outside its job's slots"
        for job, output in zip(jobs, outputs):
            prefix = contexts[job.row][: job.start]
            torch.testing.assert_close(output, alone(loaded, list(job.tokens), prefix, job.n_rows), rtol=1e-4, atol=1e-4)
            contexts[job.row] = [*prefix, *job.tokens]


def test_learned_positions_batched_with_idle_rows_answer_as_alone() -> None:
    """GPT-2 style position tables: padding and idle rows must never index past them."""
    config = GPT2Config(vocab_size=len(TOKENIZER), n_embd=32, n_layer=1, n_head=2, n_positions=64, attn_implementation="sdpa")
    torch.manual_seed(0)
    loaded = wrap_model(GPT2LMHeadModel(config).eval(), TOKENIZER, role="t", name="gpt2")
    runner = StaticRunner(loaded, 64, EagerRehearsal(), rows=3)
    runner.warm_up_graphs()
    a, b = [5, 6, 7], [8, 9]
    for graphs in (False, True):
        out = runner.forward_rows([PassJob("t", 0, a, 0, 1, graphs), PassJob("t", 2, b, 0, 2, graphs)])  # row 1 idle
        torch.testing.assert_close(out[0], alone(loaded, a, [], 1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[1], alone(loaded, b, [], 2), rtol=1e-4, atol=1e-4)
    engine = ConfSpecEngine(loaded, loaded, graph_capture=EagerRehearsal())
    for path in ("static", "graphs"):
        assert engine.generate(QUESTION, build_config(max_tokens=12, fast_path=path)).text == engine.generate(
            QUESTION, build_config(max_tokens=12, fast_path="off")
        ).text


def test_rope_scaling_that_depends_on_the_pass_is_refused_by_name() -> None:
    config = LlamaConfig(
        vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=256, rope_scaling={"rope_type": "dynamic", "factor": 2.0},
    )
    loaded = wrap_model(LlamaForCausalLM(config).eval(), TOKENIZER, role="target", name="dynamic-rope")
    engine = ConfSpecEngine(loaded, loaded)
    with pytest.raises(ConfigurationError, match="dynamic RoPE scaling"):
        engine.generate(QUESTION, build_config(max_tokens=4, fast_path="static"))
    answer = engine.generate(QUESTION, build_config(max_tokens=4, fast_path="auto"))
    assert answer.summary.target.fast_path == "off"


# -- the memory budget -----------------------------------------------------------------------------------


def test_a_131k_window_starts_under_a_small_budget_and_refuses_what_cannot_fit() -> None:
    loaded = qwen(131_072)
    budget = 4 * 2**20
    engine = ConfSpecEngine(loaded, loaded, max_batch=8, kv_cache_memory=budget)
    reports = engine.warmup("static")
    runner = engine.fast_paths.runner("target")
    assert runner is not None
    total = sum(r.nbytes for r in {id(r.cache): r.cache for r in (engine.fast_paths.runner("draft"), runner) if r}.values())
    assert total <= budget
    assert runner.cache.max_len >= min(USEFUL_CONTEXT, 131_072) or runner.rows == 1
    assert reports[1].cache_rows == engine.max_batch == runner.rows and reports[1].budget_mib == pytest.approx(4.0)
    answer = engine.generate(QUESTION, build_config(max_tokens=8, fast_path="static"))
    assert answer.summary.target.fast_path == "static" and answer.records
    too_long = [{"role": "user", "content": "apples " * (runner.max_len + 10)}]
    with pytest.raises(ContextLengthError, match=r"static KV cache row \(sized by kv_cache_memory=4\.0 MiB\)"):
        engine.generate(too_long, build_config(max_tokens=8, fast_path="static"))


def test_auto_answers_a_prompt_longer_than_a_static_row_on_off() -> None:
    """The budget bounds the static rows, not the model: `auto` takes `off` for such a call."""
    loaded = qwen(8192)
    engine = ConfSpecEngine(loaded, loaded, max_batch=1, kv_cache_memory=600_000, graph_capture=EagerRehearsal())
    assert engine.static_context["target"] < 8192
    long_prompt = [{"role": "user", "content": "apples " * (engine.static_context["target"] + 10)}]
    answer = engine.generate(long_prompt, build_config(max_tokens=4))
    assert answer.summary.target.fast_path == "off" and answer.records
    short = engine.generate(QUESTION, build_config(max_tokens=4))
    assert short.summary.target.fast_path == "graphs"
    # A prompt that fits a row but whose answer would be cut short by it goes to `off` too.
    cut_short = engine.generate(QUESTION, build_config(max_tokens=engine.static_context["target"], mode="target_only"))
    assert cut_short.summary.target.fast_path == "off"


def test_any_number_of_rows_replays_graphs() -> None:
    """Rows that are not a power of two get a captured bucket of their own."""
    loaded = qwen(128, layers=1)
    runner = StaticRunner(loaded, 128, EagerRehearsal(), rows=3)
    runner.warm_up_graphs()
    assert runner.batch_buckets == [1, 2, 3]
    jobs = [PassJob("t", 0, [5], 0, 1, True), PassJob("t", 2, [6], 0, 1, True)]
    assert runner._graph_key(jobs) == (3, 1, 128)
    out = runner.forward_rows(jobs)
    torch.testing.assert_close(out[1], alone(loaded, [6], [], 1), rtol=1e-4, atol=1e-4)


def test_the_plan_gives_up_rows_before_context_and_says_when_nothing_fits() -> None:
    per_token = {"draft": 100, "target": 400}
    windows = {"draft": 32_768, "target": 32_768}
    roomy = plan_caches(per_token, windows, 8, 8 * 500 * 40_000)
    assert not isinstance(roomy, str) and roomy.rows == 8 and roomy.tokens["target"] == 32_768 and not roomy.limited
    tight = plan_caches(per_token, windows, 8, 2 * 500 * (USEFUL_CONTEXT + 1))
    assert not isinstance(tight, str) and tight.rows == 2 and tight.tokens["target"] >= USEFUL_CONTEXT and tight.limited
    assert tight.cache_bytes <= tight.budget_bytes
    nothing = plan_caches(per_token, windows, 8, 500 * MIN_CONTEXT - 1)
    assert isinstance(nothing, str) and "cannot hold one row" in nothing


def test_no_room_for_a_useful_row_sends_auto_to_off_and_static_to_an_error() -> None:
    loaded = qwen(2048)
    engine = ConfSpecEngine(loaded, loaded, kv_cache_memory=1024)
    answer = engine.generate(QUESTION, build_config(max_tokens=6))
    assert answer.summary.target.fast_path == "off" and answer.records
    with pytest.raises(ConfigurationError, match="cannot hold one row"):
        engine.generate(QUESTION, build_config(max_tokens=6, fast_path="static"))


def test_an_allocation_that_fails_falls_back_instead_of_failing_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = qwen(512)
    engine = ConfSpecEngine(loaded, loaded)

    def no_memory(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(StaticRunner, "_allocate", no_memory)
    with pytest.raises(ModelOutOfMemoryError, match="set kv_cache_memory lower"):
        engine.generate(QUESTION, build_config(max_tokens=6, fast_path="static"))
    for _ in range(2):  # auto: every call answers on `off`
        answer = engine.generate(QUESTION, build_config(max_tokens=6, fast_path="auto"))
        assert answer.summary.target.fast_path == "off" and answer.records
    monkeypatch.undo()
    reports = engine.warmup("static")  # warm-up tries again
    assert [r.fast_path for r in reports] == ["static", "static"]


# -- attention follows the live context ----------------------------------------------------------------


@pytest.mark.parametrize("fast_path", ["static", "graphs"])
def test_attention_follows_the_live_context_not_the_window(fast_path: str) -> None:
    assert attend_buckets(32_768) == [1024, 4096, 16_384, 32_768] and attend_buckets(500) == [500]
    loaded = qwen(32_768, layers=1)
    engine = ConfSpecEngine(loaded, loaded, max_batch=1, graph_capture=EagerRehearsal())
    engine.warmup(fast_path)
    runner = engine.fast_paths.runner("target")
    assert runner is not None and runner.cache.max_len == 32_768
    runner.attended = []
    engine.generate(QUESTION, build_config(max_tokens=20, mode="target_only", fast_path=fast_path))
    short, runner.attended = runner.attended, []
    long_question = [{"role": "user", "content": "apples " * 1500}]  # about 1,500 tokens
    engine.generate(long_question, build_config(max_tokens=20, mode="target_only", fast_path=fast_path))
    long = runner.attended
    assert 1024 < long[0] < 2000  # the long prompt's pass, too long to capture, runs eagerly: its exact end
    if fast_path == "static":  # every pass reads exactly the context so far, one more slot a token
        for attended in (short, long):
            assert attended == list(range(attended[0], attended[0] + len(attended)))
        assert short[0] < 100
    else:  # replayed graphs read their bucket
        assert set(short) == {ATTEND_BASE}  # a short call never reads the window
        assert set(long[1:]) == {4096}


def test_the_compiled_decode_step_writes_keys_in_place() -> None:
    """Inductor's code for the one-token step has no loop over a whole row's keys or values."""
    from torch._inductor.utils import run_and_get_code

    loaded = qwen(4096, layers=1)
    runner = StaticRunner(loaded, 4096, EagerRehearsal(), rows=4)
    compiled = torch.compile(runner.model, dynamic=False)
    token = torch.tensor([[5]])
    with torch.inference_mode():
        runner.cache.counts[:1].fill_(1)
        _, codes = run_and_get_code(lambda: runner._pass(compiled, token, runner.max_len, 1, slice(0, 1)))
    torch._dynamo.reset()
    pattern = r"for\(int64_t (\w+)=static_cast<int64_t>\(0L\); \1<static_cast<int64_t>\((\d+)L\)"
    loops = [int(bound) for _, bound in re.findall(pattern, "\n".join(codes))]
    keys = runner.cache.layers[0].keys  # (rows, kv_heads, slots, head_dim)
    assert loops, "no generated loops found: the check would pass vacuously"
    assert keys[0].numel() not in loops and keys.numel() not in loops  # no copy of a row, or of the buffer


# -- capture, and errors that end the CUDA context ---------------------------------------------------------


def test_cuda_capture_is_thread_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other threads' CUDA work must not invalidate a capture (checked by what is asked of torch)."""
    seen: dict[str, Any] = {}

    class Graph:
        def replay(self) -> None:
            seen["replayed"] = True

    class Recording:
        def __init__(self, graph: Graph, **kwargs: Any) -> None:
            seen.update(kwargs)

        def __enter__(self) -> None:
            return None

        def __exit__(self, *args: object) -> None:
            return None

    class Stream:
        def wait_stream(self, other: object) -> None:
            return None

    monkeypatch.setattr(torch.cuda, "device", lambda device: Recording(Graph()))
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: Recording(Graph()))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Recording)
    runs: list[int] = []
    replay = CudaGraphCapture(warmup_runs=2).capture(lambda: runs.append(1), None, reset=lambda: None, device=torch.device("cuda"))
    replay()
    assert seen["capture_error_mode"] == "thread_local" and seen["replayed"] and len(runs) == 3


def test_graph_memory_counts_what_captures_keep_when_the_idle_cache_is_released_midway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The allocator's idle cache (here 14,000 MiB) is returned at both ends, so a release
    during capture (compiling does one) cannot make the figure negative, as it did on the H200."""
    allocator = {"live": 1_000, "idle": 14_000}  # MiB

    def empty_cache() -> None:
        allocator["idle"] = 0

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: (allocator["live"] + allocator["idle"]) * 2**20)
    with graph_memory(torch.device("cuda")) as memory:
        allocator["idle"] = 500  # capture temporaries, freed
        torch.cuda.empty_cache()  # a release midway
        allocator["live"] += 360  # the graphs' pool
        allocator["idle"] = 200
    assert memory.mib == 360


class BrokenCapture(EagerRehearsal):
    """A capture that fails while `broken`."""

    broken = True

    def capture(self, fn: Any, pool: object, *, reset: Any, device: torch.device) -> Any:
        if self.broken:
            raise RuntimeError("operation not permitted when stream is capturing")
        return fn


def test_a_failed_capture_is_retried_at_the_next_warm_up() -> None:
    loaded = qwen(256)
    capture = BrokenCapture()
    engine = ConfSpecEngine(loaded, loaded, graph_capture=capture)
    first = engine.generate(QUESTION, build_config(max_tokens=6, fast_path="graphs"))
    assert first.summary.target.fast_path == "static"
    capture.broken = False
    again = engine.generate(QUESTION, build_config(max_tokens=6, fast_path="graphs"))
    assert again.summary.target.fast_path == "static" and again.summary.warmup_time == 0.0  # calls do not retry
    assert [r.fast_path for r in engine.warmup("graphs")] == ["graphs", "graphs"]
    assert engine.generate(QUESTION, build_config(max_tokens=6, fast_path="graphs")).summary.target.fast_path == "graphs"


def test_a_sticky_cuda_error_ends_the_engine_with_a_restart_message(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = qwen(256)
    engine = ConfSpecEngine(loaded, loaded)
    engine.generate(QUESTION, build_config(max_tokens=4, fast_path="static"))
    forward = type(loaded.model).forward

    def asserts(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(type(loaded.model), "forward", asserts)
    with pytest.raises(DeviceContextLostError, match="restart the process"):
        engine.generate(QUESTION, build_config(max_tokens=4, fast_path="static"))
    monkeypatch.setattr(type(loaded.model), "forward", forward)
    for path in ("static", "off"):  # nothing runs on a broken context again
        with pytest.raises(DeviceContextLostError, match="restart the process"):
            engine.generate(QUESTION, build_config(max_tokens=4, fast_path=path))
    assert issubclass(DeviceContextLostError, GenerationError)


# -- host synchronisations ----------------------------------------------------------------------------


class SyncCounter:
    """Counts reads of device values by the host (what a synchronisation is on a GPU)."""

    READS = ("tolist", "item", "__int__", "__float__", "__bool__", "__index__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.paused = False
        for name in self.READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))
        uniform = TokenChooser.uniform

        def host_uniform(chooser: TokenChooser) -> float:  # drawn from a CPU generator: no device sync
            self.paused = True
            try:
                return uniform(chooser)
            finally:
                self.paused = False

        monkeypatch.setattr(TokenChooser, "uniform", host_uniform)

    def _counting(self, original: Any) -> Any:
        def read(tensor: torch.Tensor, *args: Any) -> Any:
            self.count += not self.paused
            return original(tensor, *args)

        return read


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
@pytest.mark.parametrize("graphs", [False, True], ids=["static", "rehearsed-graphs"])
def test_a_batched_decode_step_reads_every_row_back_with_one_sync(
    graphs: bool, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each row's choice (greedy, or sampled with its own seed) is made on the device and all
    rows' tokens come back with one read; each is what that row's chooser alone would pick."""
    loaded = qwen(256, layers=1)
    runner = StaticRunner(loaded, 256, EagerRehearsal(), rows=4)
    if graphs:
        runner.warm_up_graphs()
    rng = random.Random(2)
    prompts = {row: tokens(5 + row, rng) for row in range(4)}
    runner.forward_rows([PassJob("t", row, ids, 0, 1, graphs) for row, ids in prompts.items()])
    config = {row: build_config(temperature=temperature, top_p=0.9, seed=row) for row in prompts}
    choosers = {row: TokenChooser(config[row]) for row in prompts}
    jobs = [PassJob("t", row, [9], len(ids), 1, graphs, pick=choosers[row].pick) for row, ids in prompts.items()]
    counter = SyncCounter(monkeypatch)
    outputs = runner.forward_rows(jobs)
    assert counter.count == 1
    monkeypatch.undo()
    for job, output in zip(jobs, outputs):
        assert job.chosen == TokenChooser(config[job.row]).choose(output[-1, : loaded.vocab_size])


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
def test_checking_a_proposal_reads_back_at_most_twice(temperature: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_confspec.engine.speculation import Proposal, verify_proposal

    vocab, depth = len(TOKENIZER), 5
    torch.manual_seed(3)
    draft_logits, target_logits = torch.randn(depth, vocab), torch.randn(depth + 1, vocab)
    for seed in range(6):  # rejections at different depths, and full acceptance
        config = build_config(temperature=temperature, top_p=0.9, seed=seed)
        proposer = TokenChooser(config)
        proposal = Proposal([], [], None if temperature == 0 else torch.empty(depth, vocab))
        for i in range(depth):
            if proposal.draft_probs is None:
                proposal.tokens.append(int(torch.argmax(draft_logits[i])))
            else:
                proposal.tokens.append(int(proposer.draw(proposer.distribution(draft_logits[i], out=proposal.draft_probs[i]))))
        expected = verify_proposal(target_logits, proposal, TokenChooser(config))
        counter = SyncCounter(monkeypatch)
        assert verify_proposal(target_logits, proposal, TokenChooser(config)) == expected
        assert counter.count <= (1 if temperature == 0 else 2)
        monkeypatch.undo()


@pytest.mark.parametrize("temperature", [0.0, 0.8], ids=["greedy", "sampled"])
@pytest.mark.parametrize("graphs", [None, False, True], ids=["dynamic", "static", "rehearsed-graphs"])
def test_a_fixed_depth_round_reads_back_once(graphs: bool | None, temperature: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round of `speculation_depth` tokens is proposed, fed back, checked and decided on the
    device, and read back with one synchronisation, greedy or sampled; both sessions then hold
    the proposal, as after a round read token by token."""
    from langchain_confspec.engine.speculation import device_round
    from langchain_confspec.models.session import ModelSession, StaticKV

    target, draft = qwen(256, seed=1), qwen(256, seed=2, layers=1)
    runners = {m: StaticRunner(m, 256, EagerRehearsal()) for m in (target, draft)}
    for runner in runners.values():
        if graphs:
            runner.warm_up_graphs()
    prompt = tokens(9, random.Random(4))
    sessions = [ModelSession(m, prompt, kv=None if graphs is None else StaticKV(runners[m], graphs=graphs)) for m in (target, draft)]
    chooser = TokenChooser(build_config(temperature=temperature, top_p=0.9, seed=3))
    for depth in (5, 1, 4):  # a round after a round, the target's token pending in both
        base = len(prompt) if depth == 5 else len(sessions[0])
        counter = SyncCounter(monkeypatch)
        proposal, kept, extra = device_round(*sessions, chooser, depth)
        assert counter.count == 1
        monkeypatch.undo()
        assert len(proposal.tokens) == depth and 0 <= kept <= depth and 0 <= extra < len(TOKENIZER)
        assert sessions[0].ids[base:] == sessions[1].ids[base:] == proposal.tokens
        if temperature == 0:
            reference = alone(target, [], sessions[0].ids[: base + kept], 1)[0]
            assert extra == int(torch.argmax(reference[: target.vocab_size]))
        for session in sessions:
            session.truncate(base + kept)
            session.append([extra])


def test_a_verdict_is_read_with_one_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_confspec.engine.verification import VerdictReader

    reader = VerdictReader(TOKENIZER, build_config())
    logits = torch.randn(len(TOKENIZER))
    expected = reader.read(logits)
    with IndexLog() as log:
        assert reader.read(logits) == expected
    counter = SyncCounter(monkeypatch)
    assert reader.read(logits) == expected
    assert counter.count == 1
    assert log.indices and not any(isinstance(i, list | tuple) for i in log.indices)  # a list index is a copy from the host


class IndexLog(torch.overrides.TorchFunctionMode):
    """Records what tensors are indexed with."""

    def __init__(self) -> None:
        super().__init__()
        self.indices: list[object] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.Tensor.__getitem__:
            self.indices.append(args[1])
        return func(*args, **(kwargs or {}))
