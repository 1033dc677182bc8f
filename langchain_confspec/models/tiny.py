"""Tiny random-weight model pairs built locally, for tests and offline examples.

Nothing here downloads anything: the tokenizer is trained on a small built-in corpus and
the models are Llama configurations with random weights. `build_tiny_pair` saves both with
`save_pretrained`, so they load from a local path exactly like a hub model would.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The demo pair's template: the same turns, plus tools in a few tokens (a name and its
# parameters, which is all a tiny model can use), calls as the `<tool_call>` blocks the model
# writes, and results as `tool` turns. Without tools it renders exactly as CHAT_TEMPLATE.
TOOLS_CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %}{% set f = t.function or t %} "
    "{{ f.name }}({{ (f.parameters or {}).get('properties', {}) | list | join(', ') }}){% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}<tool_call>\n"
    '{"name": {{ c.function.name | tojson }}, "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Printable ASCII as byte-level BPE spells it (space, newline and tab are mapped to Ġ, Ċ, ĉ).
_ASCII_ALPHABET = [chr(c) for c in range(33, 127)] + ["\u0120", "\u010a", "\u0109"]

_CORPUS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "Step 1: 3 + 4 = 7.\n\nStep 2: He has 7 apples.\n\nAnswer: 7",
    "A train travels 60 miles in 2 hours. What is its speed?",
    "60 / 2 = 30.\n\nThe speed is 30 miles per hour.\n\nAnswer: 30",
    "Is the last step above correct? Answer Yes or No.\nAnswer: Yes",
    "Is the last step above correct? Answer Yes or No.\nAnswer: No",
    "Rate the last step above from 0 (wrong) to 9 (certainly correct).\nScore: 8",
    "0 1 2 3 4 5 6 7 8 9 10 12 24 36 48 100 144 = + - * / ( ) . , ? !",
    "You are a helpful assistant. Think step by step and give the final answer.",
    "The quick brown fox jumps over the lazy dog. Hello world, what is the weather like?",
]


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, digits split one per token, with a
    ChatML-style chat template and `<|im_end|>` as end of sequence.

    Its alphabet is the characters of the corpus plus printable ASCII (so it can spell JSON
    and tool calls), so every token decodes to whole characters and decoding step by step
    gives the same text as decoding at once.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=_ASCII_ALPHABET, show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return _wrap(tokenizer)


def with_ascii_alphabet(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The same tokenizer with a token for every printable ASCII character it lacked.

    New characters get the next free ids, so every existing id keeps its meaning and a model
    trained with the old tokenizer only needs its embeddings extended.
    """
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    next_id = max([*vocab.values(), *(t["id"] for t in data["added_tokens"])]) + 1
    for char in _ASCII_ALPHABET:
        if char not in vocab:
            vocab[char] = next_id
            next_id += 1
    return _wrap(Tokenizer.from_str(json.dumps(data)))


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """The tests' tokenizer, trained on a small built-in corpus."""
    return train_tokenizer(_CORPUS * 4, vocab_size)


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn_multiple: int = 2,
    seed: int = 0,
    max_positions: int = 512,
) -> LlamaForCausalLM:
    """A random-weight Llama whose vocabulary matches `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=ffn_multiple * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def grow_depth(model: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """Deepen a trained Llama to `layers` layers without changing what it computes.

    Each layer is followed by copies of itself whose attention and MLP output projections are
    zero, so every new layer adds nothing to the residual stream until training moves those
    projections (depth up-scaling with a function-preserving start). The demo target grows
    this way: on a CPU a token of a tiny model costs in proportion to its layer count, and the
    target must cost several times the draft for speculation to pay.
    """
    old = list(model.model.layers)
    if layers % len(old) or layers < len(old):
        raise ValueError(f"layers must be a multiple of the model's {len(old)} layers, got {layers}")
    grown = []
    for layer in old:
        grown.append(layer)
        for _ in range(layers // len(old) - 1):
            copy = type(layer)(model.config, layer_idx=0)
            copy.load_state_dict(layer.state_dict())
            torch.nn.init.zeros_(copy.self_attn.o_proj.weight)
            torch.nn.init.zeros_(copy.mlp.down_proj.weight)
            grown.append(copy)
    for index, layer in enumerate(grown):
        layer.self_attn.layer_idx = index
    model.model.layers = torch.nn.ModuleList(grown)
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * layers
    return model


def build_tiny_pair(directory: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny draft (1 layer) and target (3 layers) sharing one tokenizer under `directory`.

    Returns the draft and target paths. Reuses a pair already saved there. The context is
    1,024 tokens: the tokenizer spells unfamiliar words letter by letter, and tool
    definitions in a prompt are full of them.
    """
    root = Path(directory)
    paths = (root / "draft", root / "target")
    if all((p / "config.json").exists() for p in paths):
        return paths
    tokenizer = build_tokenizer()
    for path, layers, hidden, offset in ((paths[0], 1, 32, 0), (paths[1], 3, 64, 1)):
        model = build_model(tokenizer, hidden_size=hidden, num_layers=layers, seed=seed + offset, max_positions=1024)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths
