"""A key/value cache for a batch whose rows hold different numbers of real tokens.

Rows are right-aligned: each row's real entries are its rightmost ones (left padding), so
every row's next entry goes in the same column.  What is real is tracked explicitly in
``mask`` (never inferred from token values: pad may equal EOS); a row's positions follow
from its count of real entries.  :meth:`keep` realigns after rows keep different entries
(EQSPEC): kept entries are gathered to the right and the padding shifts to the left.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache


class RaggedCache:
    def __init__(self, config, batch_size: int, device):
        self.config = config
        self.kv = DynamicCache(config=config)
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

    def appended(self, new_mask: torch.Tensor) -> None:
        """Record that a forward appended ``new_mask.shape[1]`` columns; True where real."""
        self.mask = torch.cat([self.mask, new_mask.to(self.mask.device, torch.bool)], dim=1)
        assert self.kv.get_seq_length() in (0, self.width), "cache and mask disagree on width"

    def keep(self, keep: torch.Tensor) -> bool:
        """Keep, per row, the real entries marked in ``keep`` [B, C], in order, right-aligned.

        Returns whether this was a realignment: rows dropped different numbers of entries, so
        their padding changed (EQSPEC's cost).  A gather that only compacts a tree path, the
        same count in every row, is not one.
        """
        keep = keep & self.mask
        dropped = (self.mask & ~keep).sum(dim=1)
        ragged = bool((dropped != dropped[0]).any()) if dropped.numel() else False
        cols = torch.arange(self.width, device=keep.device)
        kept_any = keep.any(dim=0)
        last = int(cols[kept_any].max()) + 1 if bool(kept_any.any()) else 0
        # fast path: every row keeps all of its entries up to one common column
        if torch.equal(keep[:, :last], self.mask[:, :last]):
            first = _first_real_column(self.mask[:, :last])
            self._slice(first, last)
        else:
            self._gather(keep)
            return ragged
        return False

    def take_rows(self, rows: torch.Tensor) -> "RaggedCache":
        """A new cache holding copies of batch rows ``rows`` (same columns; this one is unchanged)."""
        out = RaggedCache(self.config, len(rows), self.mask.device)
        for src, dst in zip(self.kv.layers, out.kv.layers):
            if src.is_initialized:
                _fill(dst, src.keys.index_select(0, rows), src.values.index_select(0, rows))
        out.mask = self.mask.index_select(0, rows)
        return out

    @staticmethod
    def concat(caches: list["RaggedCache"]) -> "RaggedCache":
        """The rows of ``caches`` in order, as one batch; narrower ones are padded on the left."""
        width = max(c.width for c in caches)
        out = RaggedCache(caches[0].config, sum(c.batch_size for c in caches), caches[0].mask.device)
        out.mask = torch.cat([torch.nn.functional.pad(c.mask, (width - c.width, 0)) for c in caches])
        if width == 0:
            return out
        for i, dst in enumerate(out.kv.layers):
            layers = [c.kv.layers[i] for c in caches]
            like = next(l for l in layers if l.is_initialized and l.keys.numel())
            keys, values = [], []
            for c, layer in zip(caches, layers):
                if c.width:
                    k, v = layer.keys, layer.values
                else:
                    shape = (c.batch_size, like.keys.shape[1], 0, like.keys.shape[3])
                    k = v = like.keys.new_zeros(shape)
                keys.append(torch.nn.functional.pad(k, (0, 0, width - c.width, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, width - c.width, 0)))
            _fill(dst, torch.cat(keys), torch.cat(values))
        return out

    # ---- storage moves -------------------------------------------------------------------
    def _slice(self, start: int, stop: int) -> None:
        if start == 0 and stop == self.width:
            return
        for layer in self._layers():
            layer.keys = layer.keys[:, :, start:stop]
            layer.values = layer.values[:, :, start:stop]
        self.mask = self.mask[:, start:stop]

    def _gather(self, keep: torch.Tensor) -> None:
        cols = torch.arange(self.width, device=keep.device).expand_as(keep)
        order = torch.where(keep, cols, torch.full_like(cols, -1)).sort(dim=1).values
        width = int(keep.sum(dim=1).max())
        index = order[:, order.shape[1] - width:] if width else order[:, :0]
        new_mask = index >= 0
        index = index.clamp_min(0)
        for layer in self._layers():
            b, h, _, d = layer.keys.shape
            gather = index[:, None, :, None].expand(b, h, width, d)
            layer.keys = layer.keys.gather(2, gather)
            layer.values = layer.values.gather(2, gather)
        self.mask = new_mask

    def _layers(self):
        for layer in self.kv.layers:
            if getattr(layer, "is_sliding", False):
                raise NotImplementedError("sliding-window caches cannot be realigned")
            if layer.is_initialized and layer.keys.numel():
                yield layer


def _fill(layer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Give an empty cache layer these key/value tensors."""
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def _first_real_column(mask: torch.Tensor) -> int:
    """Columns on the left that are padding in every row."""
    real = mask.any(dim=0)
    return int(real.float().argmax()) if bool(real.any()) else mask.shape[1]
