"""The fast path on the CPU: static caches rolled back by position, the graph path's padded
passes (rehearsed eagerly), how `fast_path` resolves, warm-up, and clean state between calls."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from langchain_confspec import (
    ConfigurationError,
    ConfSpecChatModel,
    ConfSpecEngine,
    wrap_model,
)
from langchain_confspec.config import build_config
from langchain_confspec.engine.generation import Generation
from langchain_confspec.errors import ContextLengthError, GenerationError
from langchain_confspec.models.cuda_graphs import EagerRehearsal
from langchain_confspec.models.loading import LoadedModel, rollback_problem
from langchain_confspec.models.session import DynamicKV, ModelSession, StaticKV
from langchain_confspec.models.static_cache import StaticKVCache
from langchain_confspec.models.static_runner import PASS_BUCKETS, StaticRunner
from langchain_confspec.models.tiny import build_tokenizer

EngineOn = Callable[[ConfSpecEngine, str], ConfSpecEngine]
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]
OTHER = [{"role": "user", "content": "Hello world"}]


def fresh_logits(loaded, ids: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


# -- the engine's caches after every step ------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "confspec", "accept_threshold": 0.55, "reject_threshold": 0.6},
        {"mode": "confspec", "accept_threshold": 1.5, "target_accept_threshold": 2.0, "token_speculation": True},
        {"mode": "always_verify", "target_accept_threshold": 0.5},
        {"mode": "target_only", "token_speculation": True},
    ],
    ids=["gated", "rejecting-speculative", "always-verify", "target-speculative"],
)
def test_draft_and_target_caches_hold_the_same_text_after_every_step(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, settings: dict[str, object]
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    generation = Generation(engine, QUESTION, build_config(max_tokens=40, max_step_tokens=6, fast_path=fast_path, **settings), None, None)
    generation.prepare_paths()
    with engine.scheduler.slot() as (row, _):
        generation.open_sessions(row)
        steps = 0
        for _ in generation.steps():
            steps += 1
            draft, target = generation.draft, generation.target
            assert draft is not None and target is not None
            assert draft.ids[draft.prompt_tokens :] == target.ids[target.prompt_tokens :]
            for session in (draft, target):  # what the cache read is exactly the session's text
                torch.testing.assert_close(session.next_logits(), fresh_logits(session.loaded, session.ids), rtol=1e-4, atol=1e-4)
    assert steps > 2


# -- state between calls ----------------------------------------------------------------------------


def fresh_answer(engine: ConfSpecEngine, fast_path: str, turns: list[dict[str, str]], **settings: object) -> str:
    """What a newly built engine over the same models answers (its caches never used)."""
    capture = EagerRehearsal() if fast_path == "graphs" else None
    fresh = ConfSpecEngine(engine.draft, engine.target, engine.depth_policy, graph_capture=capture)
    return fresh.generate(turns, build_config(fast_path=fast_path, **settings)).text  # type: ignore[arg-type]


SETTINGS = {"max_tokens": 30, "max_step_tokens": 7, "accept_threshold": 0.6}


@pytest.mark.parametrize("fast_path", ["static", "graphs"])
def test_a_call_after_a_failed_call_answers_as_a_fresh_model_would(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    config = build_config(fast_path=fast_path, **SETTINGS)  # type: ignore[arg-type]
    engine.generate(QUESTION, config)  # the runners exist and hold this answer
    forward = type(engine.target.model).forward
    calls = {"n": 0}

    def fails_midway(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(engine.target.model), "forward", fails_midway)
    with pytest.raises(GenerationError, match="shapes cannot be multiplied"):
        engine.generate(OTHER, build_config(fast_path=fast_path, **{**SETTINGS, "accept_threshold": 2.0}))  # type: ignore[arg-type]
    monkeypatch.undo()
    assert engine.generate(QUESTION, config).text == fresh_answer(engine, fast_path, QUESTION, **SETTINGS)


@pytest.mark.parametrize("fast_path", ["static", "graphs"])
def test_a_call_after_a_cancelled_call_answers_as_a_fresh_model_would(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    run = engine.run(OTHER, build_config(fast_path=fast_path, **{**SETTINGS, "accept_threshold": 2.0}))  # type: ignore[arg-type]
    next(run), next(run)
    run.close()  # a consumer that stops listening half way
    answer = engine.generate(QUESTION, build_config(fast_path=fast_path, **SETTINGS)).text  # type: ignore[arg-type]
    assert answer == fresh_answer(engine, fast_path, QUESTION, **SETTINGS)


@pytest.mark.parametrize("fast_path", ["static", "graphs"])
def test_a_call_after_rolled_back_steps_answers_as_a_fresh_model_would(
    tiny_engine: ConfSpecEngine, engine_on: EngineOn, fast_path: str
) -> None:
    engine = engine_on(tiny_engine, fast_path)
    rejecting = {**SETTINGS, "max_tokens": 80, "accept_threshold": 1.5, "target_accept_threshold": 2.0}
    long_answer = engine.generate(QUESTION, build_config(fast_path=fast_path, **rejecting))  # type: ignore[arg-type]
    assert any(r.regenerated for r in long_answer.records)  # rejected steps and suffixes left stale slots
    short = engine.generate(OTHER, build_config(fast_path=fast_path, **SETTINGS)).text  # type: ignore[arg-type]
    assert short == fresh_answer(engine, fast_path, OTHER, **SETTINGS)


def test_seeded_sampling_answers_alike_on_every_path(tiny_engine: ConfSpecEngine, engine_on: EngineOn) -> None:
    settings = {"max_tokens": 40, "temperature": 0.9, "top_p": 0.8, "seed": 11, "token_speculation": True}
    answers = {
        path: engine_on(tiny_engine, path).generate(QUESTION, build_config(fast_path=path, **settings)).text  # type: ignore[arg-type]
        for path in ("off", "static", "graphs")
    }
    assert len(set(answers.values())) == 1, answers


# -- resolving fast_path -----------------------------------------------------------------------------


def test_graphs_without_cuda_is_a_configuration_error(tiny_engine: ConfSpecEngine, tiny_model_params: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="fast_path='graphs' needs CUDA, but the draft model is on cpu"):
        tiny_engine.generate(QUESTION, build_config(fast_path="graphs", max_tokens=4))
    model = ConfSpecChatModel(**tiny_model_params, max_tokens=4)
    with pytest.raises(ConfigurationError, match="needs CUDA"):
        model.invoke("hi", fast_path="graphs")
    assert model.invoke("hi").content is not None  # the refusal left the model usable


def test_auto_takes_the_measured_cpu_choice_and_static_is_reported(tiny_engine: ConfSpecEngine) -> None:
    auto = tiny_engine.generate(QUESTION, build_config(max_tokens=8)).summary
    static = tiny_engine.generate(QUESTION, build_config(max_tokens=8, fast_path="static")).summary
    assert (auto.draft.fast_path, auto.target.fast_path) == ("off", "off")
    assert (static.draft.fast_path, static.target.fast_path) == ("static", "static")
    target_only = tiny_engine.generate(QUESTION, build_config(max_tokens=8, mode="target_only", fast_path="static")).summary
    assert target_only.draft.fast_path is None  # an unused model reports no path


def sliding_window_model(window: int) -> LoadedModel:
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, use_sliding_window=True, sliding_window=window, max_window_layers=0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return wrap_model(Qwen2ForCausalLM(config).eval(), tokenizer, role="target", name="sliding")


def test_sliding_window_models_need_a_context_inside_the_window() -> None:
    loaded = sliding_window_model(64)
    with pytest.raises(ConfigurationError, match=r"sliding-window attention \(a 64-token window\).*max_context below 64"):
        ConfSpecEngine(loaded, loaded)
    engine = ConfSpecEngine(loaded, loaded, max_context=63)  # the window never fills: rollback is exact
    turns = [{"role": "user", "content": "Hello world"}]
    off = engine.generate(turns, build_config(max_tokens=30, max_step_tokens=5, accept_threshold=2.0, target_accept_threshold=2.0))
    static = engine.generate(turns, build_config(max_tokens=30, max_step_tokens=5, accept_threshold=2.0, target_accept_threshold=2.0, fast_path="static"))
    assert off.summary.target.fast_path == "off" and static.summary.target.fast_path == "static"
    assert static.text == off.text and any(r.regenerated for r in off.records)


def test_hybrid_models_with_linear_attention_are_refused() -> None:
    config = Qwen2Config(num_hidden_layers=2, layer_types=["full_attention", "linear_attention"])
    assert "linear_attention layers" in (rollback_problem(SimpleNamespace(config=config), 512) or "")  # type: ignore[arg-type]


def test_eager_attention_gets_an_additive_mask_and_the_same_answer(tiny_engine: ConfSpecEngine, tiny_pair_paths) -> None:  # type: ignore[no-untyped-def]
    loaded = [
        wrap_model(AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager"), original.tokenizer, role=role)
        for path, original, role in zip(tiny_pair_paths, (tiny_engine.draft, tiny_engine.target), ("draft", "target"))
    ]
    engine = ConfSpecEngine(*loaded)
    config = {"max_tokens": 30, "max_step_tokens": 7, "accept_threshold": 0.6}
    off = engine.generate(QUESTION, build_config(fast_path="off", **config)).text  # type: ignore[arg-type]
    assert engine.generate(QUESTION, build_config(fast_path="static", **config)).text == off  # type: ignore[arg-type]
    runner = engine.fast_paths.runner("target")
    assert runner is not None and runner.cache.attention == "eager"


# -- max_context -----------------------------------------------------------------------------------


def test_max_context_sizes_the_static_caches_and_bounds_prompts(tiny_engine: ConfSpecEngine) -> None:
    engine = ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_context=96)
    engine.generate(QUESTION, build_config(max_tokens=8, fast_path="static"))
    runner = engine.fast_paths.runner("target")
    assert runner is not None and runner.cache.max_len == 96
    assert runner.cache.layers[0].keys.shape[2] == 96 + 1  # the context, then the dump slot
    long_question = [{"role": "user", "content": "apples " * 120}]
    for path in ("off", "static"):
        with pytest.raises(ContextLengthError, match=r"context window \(max_context\) is 96 tokens"):
            engine.generate(long_question, build_config(max_tokens=8, fast_path=path))
    result = engine.generate(QUESTION, build_config(max_tokens=200, fast_path="static", mode="target_only"))
    assert result.summary.finish_reason == "length"
    assert result.summary.target.prompt_tokens + sum(r.n_tokens for r in result.records) <= 96


def test_max_context_must_leave_room(tiny_model_params: dict[str, str], tiny_engine: ConfSpecEngine) -> None:
    with pytest.raises(ConfigurationError, match="max_context"):
        ConfSpecChatModel(**tiny_model_params, max_context=1)
    with pytest.raises(ConfigurationError, match="max_context"):
        ConfSpecEngine(tiny_engine.draft, tiny_engine.target, max_context=0)


# -- warm-up ----------------------------------------------------------------------------------------


def test_warm_up_is_paid_once_and_reported_by_the_call_that_paid_it(tiny_engine: ConfSpecEngine) -> None:
    engine = ConfSpecEngine(tiny_engine.draft, tiny_engine.target, graph_capture=EagerRehearsal())
    first = engine.generate(QUESTION, build_config(max_tokens=8, fast_path="graphs")).summary
    again = engine.generate(QUESTION, build_config(max_tokens=8, fast_path="graphs")).summary
    assert first.warmup_time > 0 and first.target.warmup_seconds > 0 and first.draft.warmup_seconds > 0
    assert first.warmup_time == pytest.approx(first.draft.warmup_seconds + first.target.warmup_seconds)
    assert again.warmup_time == 0.0
    reports = engine.warmup("graphs")  # already warm: nothing more to do, same reports
    target = engine.fast_paths.runner("target")
    assert target is not None and target.graphs_ready
    assert reports[1].captured_lengths == [1, *(b for b in PASS_BUCKETS if b <= engine.context["target"])]
    assert reports[1].cache_tokens == engine.context["target"] and reports[1].cache_mib > 0


def test_chat_model_warmup_takes_the_cost_out_of_the_first_call(tiny_model_params: dict[str, str]) -> None:
    model = ConfSpecChatModel(**tiny_model_params, max_tokens=8, fast_path="static")
    reports = model.warmup()
    assert [r.fast_path for r in reports] == ["static", "static"]
    summary = model.invoke("hi").response_metadata["confspec"]["summary"]
    assert summary["warmup_time"] == 0.0 and summary["target"]["fast_path"] == "static"


# -- the runner and the cache on their own ------------------------------------------------------------


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "padded-graph-shapes"])
def test_passes_of_every_length_and_rollbacks_read_like_a_dynamic_cache(tiny_engine: ConfSpecEngine, graphs: bool) -> None:
    loaded = tiny_engine.target
    runner = StaticRunner(loaded, 256, EagerRehearsal())
    if graphs:
        runner.warm_up_graphs()
    static = ModelSession(loaded, [5, 6, 7], kv=StaticKV(runner, graphs=graphs))
    dynamic = ModelSession(loaded, [5, 6, 7], kv=DynamicKV(loaded))
    plan: list[tuple[str, int]] = [("read", 0), ("add", 1), ("add", 5), ("cut", 4), ("add", 1), ("add", 9), ("cut", 2), ("add", 20), ("add", 1)]
    for step, (action, n) in enumerate(plan):
        for session in (static, dynamic):
            if action == "add":
                session.append(range(10 + step, 10 + step + n))
            elif action == "cut":
                session.truncate(len(session) - n)
        torch.testing.assert_close(static.next_logits(), dynamic.next_logits(), rtol=1e-4, atol=1e-4)
    assert static.forward_tokens == dynamic.forward_tokens  # padding is not counted as work


def test_two_rows_at_different_lengths_and_one_rolling_back(tiny_engine: ConfSpecEngine) -> None:
    """The cache's rows: they advance and roll back independently, by where each pass starts."""
    model = tiny_engine.target.model
    cache = StaticKVCache(model, 64, rows=2)
    a, b = [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]

    def read(tokens: list[list[int]], starts: list[int]) -> torch.Tensor:
        cache.starts.copy_(torch.tensor(starts))
        cache.counts.copy_(torch.tensor([len(t) for t in tokens]))
        positions, mask = cache.begin_pass(len(tokens[0]), 64, slice(0, 2))
        with torch.inference_mode():
            logits = model(
                input_ids=torch.tensor(tokens), position_ids=positions, attention_mask=mask, **{tiny_engine.target.cache_argument: cache}
            ).logits
        cache.end_pass()
        return logits[:, -1].float()

    read([a[:3], b[:3]], [0, 0])
    read([a[3:], b[3:]], [3, 3])
    last = read([[20], [21]], [4, 6])  # row 0 rolls back two tokens while row 1 goes on
    torch.testing.assert_close(last[0], fresh_logits(tiny_engine.target, [*a[:4], 20]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last[1], fresh_logits(tiny_engine.target, [*b, 21]), rtol=1e-4, atol=1e-4)


def test_the_captured_pass_traces_as_one_graph_without_host_reads(tiny_engine: ConfSpecEngine) -> None:
    """What CUDA graph capture needs, checked on the CPU: dynamo traces the decode pass whole
    (`fullgraph=True` fails on any `.item()`, data-dependent branch or graph break)."""
    runner = StaticRunner(tiny_engine.target, 128, EagerRehearsal())
    token = torch.tensor([[5]])
    traced = torch.compile(lambda: runner._pass(runner.model, token, runner.max_len, 1, slice(0, 1)), backend="eager", fullgraph=True)
    with torch.inference_mode():
        runner.cache.counts.fill_(1)
        expected = runner._pass(runner.model, token, runner.max_len, 1, slice(0, 1)).clone()
        torch.testing.assert_close(traced(), expected, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


def test_a_pass_past_the_end_of_the_cache_is_refused(tiny_engine: ConfSpecEngine) -> None:
    runner = StaticRunner(tiny_engine.target, 8, EagerRehearsal())
    with pytest.raises(ValueError, match="overruns the static cache of 8"):
        runner.forward(list(range(5, 14)), 0, 1, graphs=False)
