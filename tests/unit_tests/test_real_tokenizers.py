"""Exact text on tokenizers built like the real ones, with padded vocabularies.

Two tokenizers are trained here with the `tokenizers` library the way Qwen/GPT-2 (byte-level
BPE) and Llama/Mistral (Metaspace with byte fallback) tokenizers are built. Characters the
training text never saw (an emoji, CJK) are spelled byte by byte, so steps of one to three
tokens split them; decoding each step on its own loses the Metaspace spaces and turns split
characters into replacement marks. A scripted model writes known text whatever it reads,
and its padded vocabulary rows carry the largest logits of all, so that only cutting them away
lets the script through. Answers, joined step records and streams must equal the tokenizer's
own decode of the ids, in every mode and on every fast path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from langchain_confspec import ConfSpecChatModel, ConfSpecEngine, StepEnd, wrap_model
from langchain_confspec.config import build_config

EngineOn = Callable[[ConfSpecEngine, str], ConfSpecEngine]
CORPUS = ["The answer is 126.", "Is the last step correct? Answer Yes or No. Yes. No.", "Café au lait, naïve résumé.", "Step 1: add the numbers.\n\nStep 2: the answer is 42."] * 20
TEXT = "Café 😀 北京\n\n answer is 126 ✓"
TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
TURNS = [{"role": "user", "content": "What is the answer?"}]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 / Qwen style: bytes mapped to printable characters, merges learned on bytes."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", chat_template=TEMPLATE)


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """Llama / Mistral style: spaces as "▁" joined to the next word, unseen characters as
    <0xNN> byte tokens, and a decoder that drops the space its output starts with."""
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    data = json.loads(backend.to_str())  # byte tokens are ordinary vocabulary, as in Llama's
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token="</s>", unk_token="<unk>", chat_template=TEMPLATE
    )


class ScriptedLlama(LlamaForCausalLM):
    """A tiny Llama whose favourite next token follows `script` from answer position 0 on (then
    end of sequence), whatever it reads; padded vocabulary rows score higher still."""

    script: list[int]
    start: int
    real_vocab: int

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        if kwargs.get("position_ids") is not None:
            positions = kwargs["position_ids"][0]
        else:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if cache is not None else 0
            positions = torch.arange(past, past + input_ids.shape[1])
        output = super().forward(input_ids=input_ids, **kwargs)
        logits = torch.zeros_like(output.logits)
        logits[..., self.real_vocab :] = 20.0
        for row, position in enumerate(positions[-logits.shape[1] :].tolist()):
            index = position + 1 - self.start
            logits[0, row, self.script[index] if 0 <= index < len(self.script) else self.config.eos_token_id] = 10.0
        output.logits = logits
        return output


def scripted(tokenizer: PreTrainedTokenizerFast, script: list[int], *, padding: int, layers: int) -> ScriptedLlama:
    config = LlamaConfig(
        vocab_size=len(tokenizer) + padding, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(layers)
    model = ScriptedLlama(config).eval()
    model.script, model.real_vocab = script, len(tokenizer)
    model.start = len(tokenizer.apply_chat_template(TURNS, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    return model


@pytest.fixture(scope="module", params=["byte-level", "metaspace"])
def pair(request: pytest.FixtureRequest) -> tuple[ConfSpecEngine, str, list[int]]:
    """An engine whose draft and target both write TEXT (their vocabularies padded differently),
    the text the tokenizer decodes from those ids, and the ids."""
    tokenizer = byte_level_tokenizer() if request.param == "byte-level" else metaspace_tokenizer()
    script = tokenizer.encode(TEXT, add_special_tokens=False)
    draft = wrap_model(scripted(tokenizer, script, padding=8, layers=1), tokenizer, role="draft", name="draft")
    target = wrap_model(scripted(tokenizer, script, padding=64, layers=2), tokenizer, role="target", name="target")
    return ConfSpecEngine(draft, target), tokenizer.decode(script, skip_special_tokens=True), script


def test_the_tokenizers_split_characters_as_real_ones_do() -> None:
    for tokenizer in (byte_level_tokenizer(), metaspace_tokenizer()):
        ids = tokenizer.encode(TEXT, add_special_tokens=False)
        assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
        one_by_one = "".join(tokenizer.decode([i], skip_special_tokens=True) for i in ids)
        assert one_by_one != TEXT  # the failure the engine must not repeat
        assert len(ids) > len(TEXT.split()) + 8  # the emoji and CJK characters took several tokens each


MODES = {
    "target_only": {"mode": "target_only"},
    "draft_only": {"mode": "draft_only"},
    "confspec": {"mode": "confspec", "accept_threshold": 0.9},  # no verdict mass: everything escalates and is rewritten
    "always_verify": {"mode": "always_verify"},
    "target_only+tokens": {"mode": "target_only", "token_speculation": True},
    "confspec+tokens": {"mode": "confspec", "token_speculation": True},
}


@pytest.mark.parametrize("step_tokens", [1, 2, 3])
@pytest.mark.parametrize("mode", list(MODES))
def test_answers_and_joined_steps_are_the_decode_of_the_ids(
    pair: tuple[ConfSpecEngine, str, list[int]], engine_on: EngineOn, fast_path: str, mode: str, step_tokens: int
) -> None:
    engine, expected, script = pair
    config = build_config(max_tokens=80, max_step_tokens=step_tokens, fast_path=fast_path, **MODES[mode])
    result = engine_on(engine, fast_path).generate(TURNS, config)
    assert result.text == expected
    assert "".join(r.text for r in result.records) == expected
    assert sum(r.n_tokens for r in result.records) == len(script)
    assert result.records[-1].end is StepEnd.EOS


def test_streams_read_the_same(pair: tuple[ConfSpecEngine, str, list[int]]) -> None:
    engine, expected, _ = pair
    model = ConfSpecChatModel(
        draft=engine.draft.model, draft_tokenizer=engine.draft.tokenizer, target=engine.target.model,
        target_tokenizer=engine.target.tokenizer, max_tokens=80, max_step_tokens=2, verdict_mass_floor=0.5,
    )  # fmt: skip
    for settings in MODES.values():
        chunks = [chunk.content for chunk in model.stream(TURNS[0]["content"], **settings)]
        assert "".join(chunks) == expected, settings  # type: ignore[arg-type]
        assert model.invoke(TURNS[0]["content"], **settings).content == expected


def test_a_stop_string_cuts_the_text_and_the_tokens_it_wrote(pair: tuple[ConfSpecEngine, str, list[int]]) -> None:
    engine, expected, script = pair
    tokenizer = engine.target.tokenizer
    result = engine.generate(TURNS, build_config(mode="target_only", max_tokens=80, max_step_tokens=3, stop=["is 12"]))
    assert result.text == expected[: expected.index("is 12")]
    assert result.summary.finish_reason == "stop"
    # usage counts the tokens whose text begins before the stop string, no more
    counted = sum(r.n_tokens for r in result.records)
    assert len(tokenizer.decode(script[: counted - 1], skip_special_tokens=True)) < len(result.text)
    assert len(tokenizer.decode(script[:counted], skip_special_tokens=True)) >= len(result.text)
    assert counted < len(tokenizer.encode(expected[: expected.index("is 12") + 5], add_special_tokens=False))


def test_kept_proposals_past_a_steps_end_are_not_counted(pair: tuple[ConfSpecEngine, str, list[int]]) -> None:
    engine, expected, _ = pair
    result = engine.generate(TURNS, build_config(mode="target_only", token_speculation=True, max_tokens=80, max_step_tokens=40))
    assert result.text == expected and len(result.records) == 2  # the blank line ends the first step
    first = result.records[0].token_speculation
    assert result.records[0].end is StepEnd.DELIMITER
    assert first is not None and first.proposed > first.accepted  # the draft ran past the delimiter
    for record in result.records:
        speculation = record.token_speculation
        assert speculation is not None
        assert speculation.accepted <= speculation.tokens <= record.n_tokens + 1  # + the end-of-sequence token


def test_sampling_with_speculation_never_writes_a_padding_row(pair: tuple[ConfSpecEngine, str, list[int]]) -> None:
    """The issue's failure: a target whose padding rows could win hands the draft an id its
    smaller embedding does not have (IndexError)."""
    engine, expected, _ = pair
    for seed in range(5):
        config = build_config(mode="target_only", token_speculation=True, temperature=1.0, seed=seed, max_tokens=40)
        result = engine.generate(TURNS, config)
        assert result.text and all(r.token_speculation is not None for r in result.records)
    greedy = engine.generate(TURNS, build_config(mode="target_only", token_speculation=True, max_tokens=40))
    assert greedy.text == expected
