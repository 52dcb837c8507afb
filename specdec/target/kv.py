"""A key/value cache for a batch whose rows hold different numbers of real tokens.

Rows are right-aligned: each row's real entries are its rightmost ones (left padding), so
every row's next entry goes in the same column.  What is real is tracked explicitly in
``mask`` (never inferred from token values: pad may equal EOS); a row's positions follow
from its count of real entries.

Every layer keeps its whole history, sliding-window layers included (the attention masks apply
the window; see :mod:`specdec.target.masks`).  Storage is one preallocated buffer per layer (:class:`BufferLayer`): a forward writes its new
keys and values in place and attends over a view, so a step copies nothing of the cache (a
Hugging Face ``DynamicCache`` concatenates, copying the whole cache, at every forward).
:meth:`RaggedCache.keep` drops rejected draft entries: a chain's accepted prefix is a crop (no
copy at all), a tree path moves only the kept draft entries, and rows that kept different
numbers of entries are realigned (EQSPEC): kept entries are gathered to the right and the
padding shifts to the left.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin

GROWTH = 128  # spare columns allocated beyond what is needed, so appends rarely reallocate


def check_cache_support(config) -> None:
    """Raise when a layer's cache is not a key/value store (linear or recurrent attention, SSMs).

    Sliding-window layers are supported: every layer keeps its whole history here and the
    attention masks apply the window, so a tree's slots and rows longer than the window are exact.
    """
    probe = DynamicCache(config=config)
    kinds = {type(layer).__name__ for layer in probe.layers}
    if kinds - {"DynamicLayer", "DynamicSlidingWindowLayer"}:
        family = getattr(config, "model_type", type(config).__name__)
        raise NotImplementedError(
            f"{family} models keep {sorted(kinds)} cache layers (linear or recurrent attention); "
            "specdec's ragged cache supports key/value attention layers only"
        )


class BufferLayer(CacheLayerMixin):
    """One layer's keys and values in a buffer [B, H, capacity, D]; columns ``start:stop`` are in use."""

    is_sliding = False
    is_croppable = True

    def __init__(self):  # no super().__init__: keys and values are views, not attributes
        self.is_initialized = False
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None
        self.start = 0
        self.stop = 0

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self.key_buffer is None else self.key_buffer[:, :, self.start:self.stop]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self.value_buffer is None else self.value_buffer[:, :, self.start:self.stop]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.key_buffer = key_states.new_zeros(b, h, 0, d)
        self.value_buffer = value_states.new_zeros(b, value_states.shape[1], 0, value_states.shape[3])
        self.start = self.stop = 0
        self.is_initialized = True

    def set(self, keys: torch.Tensor, values: torch.Tensor, spare: int = GROWTH) -> None:
        """Hold copies of ``keys`` and ``values`` [B, H, W, D], with ``spare`` free columns after them."""
        b, h, w, d = keys.shape
        self.dtype, self.device = keys.dtype, keys.device
        self.key_buffer = keys.new_empty(b, h, w + spare, d)
        self.value_buffer = values.new_empty(b, values.shape[1], w + spare, values.shape[3])
        self.key_buffer[:, :, :w] = keys
        self.value_buffer[:, :, :w] = values
        self.start, self.stop = 0, w
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[2]
        if self.stop + q > self.key_buffer.shape[2]:
            self.set(self.keys, self.values, spare=max(q + GROWTH, self.stop - self.start))
        self.key_buffer[:, :, self.stop:self.stop + q] = key_states
        self.value_buffer[:, :, self.stop:self.stop + q] = value_states
        self.stop += q
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.stop - self.start if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.start = self.stop = 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the negative number of tokens to remove")
        self.stop += tokens_to_remove

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length():
            self.set(self.keys[indices], self.values[indices])


class RaggedCache:
    def __init__(self, config, batch_size: int, device):
        check_cache_support(config)
        self.config = config
        self.layers = [BufferLayer() for _ in range(config.num_hidden_layers)]
        self.kv = Cache(layers=self.layers)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)  # [B, C] real entries

    @property
    def lengths(self) -> torch.Tensor:
        """[B] real entries per row (the position of each row's next token)."""
        return self.mask.sum(dim=1)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def padded(self) -> bool:
        """Whether any entry is padding (then attention needs the mask)."""
        return not bool(self.mask.all())

    def appended(self, new_mask: torch.Tensor) -> None:
        """Record that a forward appended ``new_mask.shape[1]`` columns; True where real."""
        self.mask = torch.cat([self.mask, new_mask.to(self.mask.device, torch.bool)], dim=1)
        assert self.kv.get_seq_length() in (0, self.width), "cache and mask disagree on width"

    def keep(self, keep: torch.Tensor) -> bool:
        """Keep, per row, the real entries marked in ``keep`` [B, C], in order, right-aligned.

        Returns whether this was a realignment: rows dropped different numbers of entries, so
        their padding changed (EQSPEC's cost).  A commit that only drops or compacts the newest
        entries, the same count in every row, is not one, and copies at most those entries.
        """
        keep = keep & self.mask
        changed = (keep != self.mask).any(dim=0)
        if not bool(changed.any()):
            return False
        first = int(changed.to(torch.uint8).argmax())  # columns before it stay as they are
        tail = keep[:, first:]
        counts = tail.sum(dim=1)
        if bool((counts != counts[0]).any()):
            self._gather(keep)
            return True
        count = int(counts[0])
        if count:
            cols = torch.arange(tail.shape[1], device=keep.device).expand_as(tail)
            index = torch.where(tail, cols, cols.new_full((), tail.shape[1])).sort(dim=1).values[:, :count]
            if not torch.equal(index, cols[:, :count]):  # a tree path, not a crop: move what is kept
                for layer in self._layers():
                    _move_tail(layer, first, index)
        for layer in self._layers():
            layer.stop = layer.start + first + count
        self.mask = self.mask[:, :first + count]
        self._trim_left()
        return False

    def take_rows(self, rows: torch.Tensor) -> "RaggedCache":
        """A new cache holding copies of batch rows ``rows`` (this one is unchanged)."""
        out = RaggedCache.__new__(RaggedCache)
        out.config = self.config
        out.layers = [BufferLayer() for _ in self.layers]
        out.kv = Cache(layers=out.layers)
        for src, dst in zip(self.layers, out.layers):
            if src.is_initialized:
                dst.set(src.keys.index_select(0, rows), src.values.index_select(0, rows))
        out.mask = self.mask.index_select(0, rows)
        out._trim_left()
        return out

    @staticmethod
    def concat(caches: list["RaggedCache"]) -> "RaggedCache":
        """The rows of ``caches`` in order, as one batch; narrower ones are padded on the left."""
        width = max(c.width for c in caches)
        out = RaggedCache(caches[0].config, sum(c.batch_size for c in caches), caches[0].mask.device)
        out.mask = torch.cat([torch.nn.functional.pad(c.mask, (width - c.width, 0)) for c in caches])
        if width == 0:
            return out
        for i, dst in enumerate(out.layers):
            layers = [c.layers[i] for c in caches]
            like = next(layer for layer in layers if layer.get_seq_length())
            keys, values = [], []
            for c, layer in zip(caches, layers):
                if c.width:
                    k, v = layer.keys, layer.values
                else:
                    k = like.keys.new_zeros(c.batch_size, like.keys.shape[1], 0, like.keys.shape[3])
                    v = like.values.new_zeros(c.batch_size, like.values.shape[1], 0, like.values.shape[3])
                keys.append(torch.nn.functional.pad(k, (0, 0, width - c.width, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, width - c.width, 0)))
            dst.set(torch.cat(keys), torch.cat(values))
        return out

    # ---- storage moves -------------------------------------------------------------------
    def _gather(self, keep: torch.Tensor) -> None:
        """Realign: per row, the kept entries in order, right-aligned, padding on the left."""
        cols = torch.arange(self.width, device=keep.device).expand_as(keep)
        order = torch.where(keep, cols, torch.full_like(cols, -1)).sort(dim=1).values
        width = int(keep.sum(dim=1).max())
        index = order[:, order.shape[1] - width:] if width else order[:, :0]
        new_mask = index >= 0
        index = index.clamp_min(0)
        for layer in self._layers():
            b, h, _, d = layer.keys.shape
            gather = index[:, None, :, None].expand(b, h, width, d)
            layer.set(layer.keys.gather(2, gather), layer.values.gather(2, gather))
        self.mask = new_mask

    def _trim_left(self) -> None:
        """Forget columns on the left that are padding in every row (a view change, no copy)."""
        real = self.mask.any(dim=0)
        first = int(real.to(torch.uint8).argmax()) if bool(real.any()) else self.width
        if first:
            for layer in self._layers():
                layer.start += first
            self.mask = self.mask[:, first:]

    def _layers(self):
        for layer in self.layers:
            if layer.is_initialized:
                yield layer


def _move_tail(layer: BufferLayer, first: int, index: torch.Tensor) -> None:
    """Write the entries at columns ``first + index`` [B, c] of each row to columns ``first : first + c``."""
    start = layer.start + first
    count = index.shape[1]
    for buffer in (layer.key_buffer, layer.value_buffer):
        b, h, _, d = buffer.shape
        region = buffer[:, :, start:layer.stop]
        moved = region.gather(2, index[:, None, :, None].expand(b, h, count, d))
        buffer[:, :, start:start + count] = moved
