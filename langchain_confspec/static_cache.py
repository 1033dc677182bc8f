"""A preallocated KV cache with one write position per row, rolled back by moving it.

`StaticKVCache` holds keys and values for `batch_size` rows of `max_len` positions, allocated
once per model and reused by every call. Each row has its own length in a device tensor
(`lengths`), so rows can stand at different positions and one row can roll back while others
go on (the batching scheduler needs both; a single answer uses row 0). A forward pass over
`L` new tokens writes each row's keys at `lengths[row] + 0..L-1`, and the engine passes the
matching positions and a mask that hides every slot at or past a row's length: stale keys
beyond it (a rejected step, a verification suffix, bucket padding) are never attended to and
are overwritten by the next write. Rolling back is therefore setting `lengths`, never
copying or cropping.

Every tensor operation here runs on the cache's device and reads no value back to the host,
so the same forward pass runs eagerly and inside a captured CUDA graph.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from langchain_confspec.errors import ConfigurationError
from langchain_confspec.loading import rollback_problem

# Attention implementations whose masks this cache knows how to build: `sdpa` takes a boolean
# mask (True attends), `eager` an additive one (0 or the dtype's minimum).
SUPPORTED_ATTENTION = ("sdpa", "eager")


class _RowLayer(CacheLayerMixin):
    """One decoder layer's keys and values: (batch, kv_heads, max_len, head_dim), written at
    the positions its owning cache set for the current forward pass."""

    is_compileable = True
    is_sliding = False

    def __init__(self, owner: StaticKVCache) -> None:
        super().__init__()
        self._owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("StaticKVCache allocates its layers up front")

    def allocate(self, shape: tuple[int, int, int, int], value_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        batch, heads, length, key_dim = shape
        self.keys = torch.zeros((batch, heads, length, key_dim), dtype=dtype, device=device)
        self.values = torch.zeros((batch, heads, length, value_dim), dtype=dtype, device=device)
        self.dtype, self.device = dtype, device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: (batch, kv_heads, L, head_dim); positions: (batch, L)
        positions = self._owner.write_positions  # (rows, L) of the rows this pass covers
        assert positions is not None, "StaticKVCache.begin_pass must run before a forward pass"
        rows, attend = self._owner.write_rows, self._owner.attend_len
        keys, values = self.keys[rows], self.values[rows]
        keys.scatter_(2, _expand_index(positions, key_states), key_states.to(self.dtype))
        values.scatter_(2, _expand_index(positions, value_states), value_states.to(self.dtype))
        return keys[:, :, :attend], values[:, :, :attend]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.attend_len, 0

    def get_seq_length(self) -> Any:
        return self._owner.lengths.max()

    def get_max_length(self) -> int:
        return self._owner.max_len


def _expand_index(positions: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = states.shape
    return positions[:, None, :, None].expand(batch, heads, length, dim)


class StaticKVCache(Cache):
    """Keys and values of `batch_size` rows of up to `max_len` tokens, on the model's device."""

    def __init__(self, model: PreTrainedModel, max_len: int, batch_size: int = 1, scratch_len: int = 1) -> None:
        config = model.config.get_text_config(decoder=True)
        check_static_support(model, max_len)
        self.max_len = max_len
        self.rows = batch_size
        self.attention = config._attn_implementation
        self.dtype = model.dtype
        device = model.get_input_embeddings().weight.device
        self.device = device
        layers = [_RowLayer(self) for _ in range(config.num_hidden_layers)]
        super().__init__(layers=layers)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        # Slots past the context: where rows that are not part of a batched pass write. No real
        # position reaches them, so nothing ever attends to them.
        self.scratch = max_len
        self.scratch_len = scratch_len if batch_size > 1 else 1
        for layer in layers:
            layer.allocate((batch_size, heads, max_len + self.scratch_len, head_dim), head_dim, self.dtype, device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._slots = torch.arange(max_len + self.scratch_len, device=device)
        self._open = torch.zeros((), dtype=self.dtype, device=device)  # additive mask values (eager attention)
        self._closed = torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=device)
        self.write_positions: torch.Tensor | None = None
        self.write_rows = slice(0, batch_size)
        self.attend_len = max_len

    @property
    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    def begin_pass(self, n_tokens: int, attend_len: int, rows: slice = slice(0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (rows, n_tokens) and attention mask for a pass over `n_tokens` new tokens
        in each of `rows`, attending to the first `attend_len` slots; the layers then write there."""
        positions = self.lengths[rows, None] + self._slots[:n_tokens]
        visible = self._slots[None, None, None, :attend_len] <= positions[:, None, :, None]
        self.write_positions, self.write_rows = positions, rows
        self.attend_len = attend_len
        if self.attention == "eager":
            return positions, torch.where(visible, self._open, self._closed)
        return positions, visible

    def end_pass(self, n_tokens: int, rows: slice = slice(0, 1)) -> None:
        self.lengths[rows].add_(n_tokens)
        self.write_positions = None


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
    problem = rollback_problem(model, max_len)
    if problem is not None:
        raise ConfigurationError(f"The static KV cache cannot serve {type(model).__name__}: {problem}.")
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1 or next(iter(devices)).type == "meta":
        raise ConfigurationError(
            f"The static KV cache needs the whole model on one device; {type(model).__name__} is spread over "
            f"{sorted(str(d) for d in devices)}. Use fast_path='off', or load it on one device (device_map={{'': 0}})."
        )
