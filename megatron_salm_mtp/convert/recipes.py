"""How one Megatron tensor (its full TP=1 value) is made from Hugging Face tensors, and how one TP
shard of it is read without materialising the others.

``shard(src, dim, rank, size)`` returns the ``rank``-th of ``size`` shards along ``dim`` (None: the
whole tensor). Megatron's layouts that matter here:

* fused QKV (``linear_qkv``): per query group, its query heads, then one key head, one value head;
  a TP shard is a contiguous range of groups.
* SwiGLU ``linear_fc1``: ``[gate; up]``; each TP rank keeps ``[gate_shard; up_shard]``.
* vocabulary-padded embeddings / output layers: rows past the source vocabulary are zero.
"""

from collections.abc import Sequence

import torch


def _range(total: int, rank: int, size: int):
    if total % size:
        raise ValueError(f'cannot split {total} into {size} tensor-parallel shards')
    step = total // size
    return rank * step, (rank + 1) * step


class Recipe:
    """Default: build the full tensor, then take the shard (fine for per-layer-sized tensors)."""

    def full(self, src) -> torch.Tensor:
        raise NotImplementedError

    def shard(self, src, dim: int | None, rank: int, size: int) -> torch.Tensor:
        full = self.full(src)
        if dim is None or size == 1:
            return full
        return full.chunk(size, dim=dim)[rank]

    def sources(self) -> Sequence[str]:
        """Hugging Face tensor names this recipe reads (for the 'unused tensor' check)."""
        return ()


class Copy(Recipe):
    """One source tensor as is, optionally zero-padded (or cut) along dim 0 to ``rows`` (vocabulary)."""

    def __init__(self, key: str, rows: int | None = None):
        self.key, self.rows = key, rows

    def sources(self):
        return (self.key,)

    def full(self, src):
        return self.shard(src, None, 0, 1)

    def shard(self, src, dim, rank, size):
        shape = src.shape(self.key)
        rows = self.rows or shape[0]
        if dim == 1 and size > 1:
            start, stop = _range(shape[1], rank, size)
            tensor = src.get(self.key, 1, start, stop)
            first, last = 0, rows
        else:
            first, last = (0, rows) if dim is None or size == 1 else _range(rows, rank, size)
            tensor = src.get(self.key, 0, min(first, shape[0]), min(last, shape[0]))
        tensor = tensor[: last - first]
        if tensor.shape[0] < last - first:  # vocabulary padding rows
            pad = tensor.new_zeros((last - first - tensor.shape[0],) + tuple(tensor.shape[1:]))
            tensor = torch.cat([tensor, pad])
        return tensor


class FusedQKV(Recipe):
    """Megatron's fused QKV weight (or bias) from separate q/k/v projections; a missing bias
    (Whisper's key projection) is zeros."""

    def __init__(self, q: str, k: str, v: str, heads: int, groups: int, head_dim: int,
                 bias: bool = False):
        self.q, self.k, self.v = q, k, v
        self.heads, self.groups, self.head_dim, self.bias = heads, groups, head_dim, bias

    def sources(self):
        return (self.q, self.k, self.v)

    def full(self, src):
        return self.shard(src, None, 0, 1)

    def _read(self, src, key, start, stop, like):
        if key in src:
            return src.get(key, 0, start, stop)
        if self.bias:
            return like.new_zeros(stop - start)
        raise KeyError(key)

    def shard(self, src, dim, rank, size):
        first, last = (0, self.groups) if dim is None else _range(self.groups, rank, size)
        per, hd = self.heads // self.groups, self.head_dim
        q = src.get(self.q, 0, first * per * hd, last * per * hd)
        k = self._read(src, self.k, first * hd, last * hd, q)
        v = self._read(src, self.v, first * hd, last * hd, q)
        n = last - first
        tail = tuple(q.shape[1:])
        fused = torch.cat([q.reshape((n, per * hd) + tail), k.reshape((n, hd) + tail),
                           v.reshape((n, hd) + tail)], dim=1)
        return fused.reshape((n * (per + 2) * hd,) + tail)


class GatedFC1(Recipe):
    """SwiGLU ``linear_fc1`` = ``[gate; up]``; a TP shard is ``[gate_shard; up_shard]``."""

    def __init__(self, gate: str, up: str):
        self.gate, self.up = gate, up

    def sources(self):
        return (self.gate, self.up)

    def full(self, src):
        return torch.cat([src.get(self.gate), src.get(self.up)])

    def shard(self, src, dim, rank, size):
        if dim is None or size == 1:
            return self.full(src)
        start, stop = _range(src.shape(self.gate)[0], rank, size)
        return torch.cat([src.get(self.gate, 0, start, stop), src.get(self.up, 0, start, stop)])


class SwapHalves(Recipe):
    """An MTP input projection stored as ``W [h, 2h]`` over ``cat(hidden, embedding)`` (MiMo),
    reordered to Megatron's ``cat(embedding, hidden)``."""

    def __init__(self, key: str):
        self.key = key

    def sources(self):
        return (self.key,)

    def full(self, src):
        weight = src.get(self.key)
        half = weight.shape[1] // 2
        return torch.cat([weight[:, half:], weight[:, :half]], dim=1)


class Constant(Recipe):
    """A tensor made here (new MTP heads): ``make()`` returns the full value."""

    def __init__(self, make, describe: str):
        self.make, self.describe = make, describe

    def full(self, src):
        return self.make()


class FromRecipe(Recipe):
    """Another Megatron tensor's recipe (an MTP layer initialised from a decoder layer)."""

    def __init__(self, recipe: Recipe, origin: str):
        self.recipe, self.origin = recipe, origin

    def sources(self):
        return self.recipe.sources()

    def full(self, src):
        return self.recipe.full(src)

    def shard(self, src, dim, rank, size):
        return self.recipe.shard(src, dim, rank, size)
