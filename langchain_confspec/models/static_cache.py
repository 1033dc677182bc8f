"""A preallocated KV cache with one row per concurrent generation, rolled back by position.

`StaticKVCache` holds keys and values for `rows` rows of `max_len` slots, allocated once per
model and reused by every call; slot `max_len` of every row is its *dump slot*. A pass over
`L` new tokens in a span of rows takes, per row, where its tokens start (`starts`) and how
many of the `L` are real (`counts`). Real tokens are right-aligned: the last `counts[r]` of
the pass, at positions `starts[r] + 0..counts[r]-1`, written to the slots of those positions.
Everything else (padding up to a captured length, a row with no job in this pass) gets
position 0 and writes to the dump slot, which nothing attends to. So no pass writes outside
its row, and no position id is ever outside the model's range, whatever the mix of jobs.

A row's slot for a position is the position itself: rolling back is only starting the next
pass earlier (stale keys past a row's length are masked and overwritten later), never
copying or cropping. Keys are written in place through the whole buffer (`index_put_`), which
a compiled step keeps in place too; attention reads the first `attend` slots of each row.

Every tensor operation here runs on the cache's device and reads no value back to the host,
so the same forward pass runs eagerly and inside a captured CUDA graph.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from langchain_confspec.errors import ConfigurationError
from langchain_confspec.models.loading import rollback_problem

# Attention implementations whose masks this cache knows how to build: `sdpa` takes a boolean
# mask (True attends), `eager` an additive one (0 or the dtype's minimum).
SUPPORTED_ATTENTION = ("sdpa", "eager")
# RoPE variants whose frequencies depend on the largest position in a pass: reading it is a host
# sync (no graph capture), and a batched pass would switch every row to its longest row's frequencies.
POSITION_DEPENDENT_ROPE = ("dynamic", "longrope")


class _RowLayer(CacheLayerMixin):
    """One decoder layer's keys and values: (rows, kv_heads, max_len + 1, head_dim), written at
    the slots its owning cache set for the current forward pass."""

    is_compileable = True
    is_sliding = False

    def __init__(self, owner: StaticKVCache) -> None:
        super().__init__()
        self._owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("StaticKVCache allocates its layers up front")

    def allocate(self, shape: tuple[int, int, int, int], value_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        rows, heads, slots, key_dim = shape
        self.keys = torch.zeros((rows, heads, slots, key_dim), dtype=dtype, device=device)
        self.values = torch.zeros((rows, heads, slots, value_dim), dtype=dtype, device=device)
        self.dtype, self.device = dtype, device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: (span, kv_heads, L, head_dim); write_rows: (span, 1); write_slots: (span, L)
        owner = self._owner
        assert owner.write_slots is not None, "StaticKVCache.begin_pass must run before a forward pass"
        # index tensors broadcast to (span, L, kv_heads): the values' layout, (span, L, kv_heads, head_dim)
        where = (owner.write_rows[:, :, None], owner.head_ids[None, None, :], owner.write_slots[:, :, None])
        self.keys.index_put_(where, key_states.transpose(1, 2).to(self.dtype))
        self.values.index_put_(where, value_states.transpose(1, 2).to(self.dtype))
        span = owner.span
        return self.keys[span, :, : owner.attend_len], self.values[span, :, : owner.attend_len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.attend_len, 0

    def get_seq_length(self) -> Any:
        return self._owner.attend_len

    def get_max_length(self) -> int:
        return self._owner.max_len


class StaticKVCache(Cache):
    """Keys and values of `rows` rows of up to `max_len` tokens (plus a dump slot each), on the
    model's device."""

    def __init__(self, model: PreTrainedModel, max_len: int, rows: int = 1) -> None:
        config = model.config.get_text_config(decoder=True)
        check_static_support(model, max_len)
        self.max_len = max_len
        self.dump = max_len
        self.attention = config._attn_implementation
        self.dtype = model.dtype
        device = model.get_input_embeddings().weight.device
        self.device = device
        layers = [_RowLayer(self) for _ in range(config.num_hidden_layers)]
        super().__init__(layers=layers)
        heads, head_dim = kv_shape(model)
        for layer in layers:
            layer.allocate((rows, heads, max_len + 1, head_dim), head_dim, self.dtype, device)
        # The pass's inputs, in fixed buffers so that captured graphs read them: per row, where
        # its real tokens start and how many of the pass's tokens are real (0: not in the pass).
        self.starts = torch.zeros(rows, dtype=torch.long, device=device)
        self.counts = torch.zeros(rows, dtype=torch.long, device=device)
        self._offsets = torch.arange(max_len + 1, device=device)
        self._row_ids = torch.arange(rows, device=device)
        self.head_ids = torch.arange(heads, device=device)
        self._open = torch.zeros((), dtype=self.dtype, device=device)  # additive mask values (eager attention)
        self._closed = torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=device)
        self.write_slots: torch.Tensor | None = None
        self.write_rows = self._row_ids[:1, None]
        self.span = slice(0, 1)
        self.attend_len = max_len

    @property
    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    def begin_pass(self, n_tokens: int, attend_len: int, span: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (span, n_tokens) and attention mask for a pass over `n_tokens` tokens in
        each row of `span`, as `starts` and `counts` say, attending to the first `attend_len`
        slots; the layers then write each real token at its position's slot."""
        starts, counts = self.starts[span, None], self.counts[span, None]  # (span, 1)
        offsets = self._offsets[None, :n_tokens] - (n_tokens - counts)  # real tokens: 0..count-1
        real = offsets >= 0
        positions = torch.where(real, starts + offsets, 0)
        self.write_slots = torch.where(real, positions, self.dump)
        self.write_rows, self.span, self.attend_len = self._row_ids[span, None], span, attend_len
        visible = self._offsets[None, None, None, :attend_len] <= positions[:, None, :, None]
        if self.attention == "eager":
            return positions, torch.where(visible, self._open, self._closed)
        return positions, visible

    def end_pass(self) -> None:
        self.write_slots = None


def kv_shape(model: PreTrainedModel) -> tuple[int, int]:
    """(key/value heads, head dimension) of every layer of `model`."""
    config = model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return heads, head_dim


def bytes_per_token(model: PreTrainedModel) -> int:
    """Memory one token takes in `model`'s static cache (keys and values, every layer)."""
    config = model.config.get_text_config(decoder=True)
    heads, head_dim = kv_shape(model)
    return 2 * config.num_hidden_layers * heads * head_dim * model.dtype.itemsize


def check_static_support(model: PreTrainedModel, max_len: int) -> None:
    """Refuse models this cache cannot serve, saying why (the engine then uses dynamic caches).

    Sliding-window layers are served as full attention, which they are while the context
    (`max_len`) stays below their window; the engine refuses longer contexts for them.
    """
    config = model.config.get_text_config(decoder=True)
    attention = config._attn_implementation
    if attention not in SUPPORTED_ATTENTION:
        raise ConfigurationError(
            f"The static KV cache supports attn_implementation {' or '.join(SUPPORTED_ATTENTION)}; "
            f"{type(model).__name__} uses {attention!r}. Load it with attn_implementation='sdpa' or use fast_path='off'."
        )
    rope = _rope_types(config) & set(POSITION_DEPENDENT_ROPE)
    if rope:
        raise ConfigurationError(
            f"The static KV cache cannot serve {type(model).__name__}: its {'/'.join(sorted(rope))} RoPE scaling picks "
            "frequencies from the largest position in each pass, which rows batched together do not share."
        )
    problem = rollback_problem(model, max_len)
    if problem is not None:
        raise ConfigurationError(f"The static KV cache cannot serve {type(model).__name__}: {problem}.")
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1 or next(iter(devices)).type == "meta":
        raise ConfigurationError(
            f"The static KV cache needs the whole model on one device; {type(model).__name__} is spread over "
            f"{sorted(str(d) for d in devices)}. Use fast_path='off', or load it on one device (device_map={{'': 0}})."
        )


def _rope_types(config: Any) -> set[str]:
    """Every RoPE type a config names (per layer type where it has several)."""
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(parameters, dict):
        return set()
    nested = [p for p in parameters.values() if isinstance(p, dict)]
    return {str(p.get("rope_type", "default")) for p in [parameters, *nested] if "rope_type" in p}
