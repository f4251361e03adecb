"""Lazy, sliced reads of a Hugging Face safetensors checkpoint (single file or sharded with an index).

Nothing is read until a tensor is asked for, and a row or column range of a tensor is read without
the rest (``safe_open(...).get_slice``): a TP rank of a large model holds one tensor (or one slice)
at a time, never the whole checkpoint.
"""

import json
import os
from collections.abc import Iterable

import torch
from safetensors import safe_open


class TensorSource:
    """Tensors of one Hugging Face model folder by their Hugging Face names."""

    def __init__(self, folder: str):
        self.folder = folder
        index = os.path.join(folder, 'model.safetensors.index.json')
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)['weight_map']
        else:
            files = sorted(n for n in os.listdir(folder) if n.endswith('.safetensors'))
            if not files:
                raise FileNotFoundError(f'{folder}: no *.safetensors file (convert .bin checkpoints '
                                        'with transformers save_pretrained(safe_serialization=True))')
            weight_map = {}
            for name in files:
                with safe_open(os.path.join(folder, name), framework='pt') as handle:
                    weight_map.update({key: name for key in handle.keys()})
        self._file_of: dict[str, str] = weight_map
        self._handles = {}

    def keys(self) -> Iterable[str]:
        return self._file_of.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._file_of

    def _handle(self, key: str):
        if key not in self._file_of:
            raise KeyError(f'{self.folder}: the checkpoint has no tensor {key!r}')
        name = self._file_of[key]
        if name not in self._handles:
            self._handles[name] = safe_open(os.path.join(self.folder, name), framework='pt')
        return self._handles[name]

    def shape(self, key: str):
        return tuple(self._handle(key).get_slice(key).get_shape())

    def get(self, key: str, dim: int | None = None, start: int = 0,
            stop: int | None = None) -> torch.Tensor:
        """The tensor, or only ``[start, stop)`` along ``dim`` (0 or 1), in float32."""
        handle = self._handle(key)
        if dim is None:
            tensor = handle.get_tensor(key)
        else:
            piece = handle.get_slice(key)
            stop = piece.get_shape()[dim] if stop is None else stop
            tensor = piece[start:stop] if dim == 0 else piece[:, start:stop]
        return tensor.float()


def read_config(folder: str) -> dict:
    path = os.path.join(folder, 'config.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{folder}: no config.json')
    with open(path) as f:
        return json.load(f)
