"""``benchmarks/tensor_memory.py``: the live-tensor-bytes meter behind the no-GPU memory figures of issue 4.

Every expected number is counted by hand from the shapes (float32 = 4 bytes), so a meter that double-counts views,
counts weights, misses frees or mixes devices fails.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SPEC = importlib.util.spec_from_file_location(
    "tensor_memory", Path(__file__).resolve().parents[2] / "benchmarks" / "tensor_memory.py"
)
tensor_memory = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tensor_memory)
LiveTensorBytes, weight_bytes = tensor_memory.LiveTensorBytes, tensor_memory.weight_bytes


def test_counts_each_live_storage_once_and_releases_it_when_freed() -> None:
    meter = LiveTensorBytes("cpu", weights=())
    with meter:
        a = torch.zeros(1000)  # 4000 B
        view = a.view(10, 100)  # same storage
        b = a + 1  # 4000 B
        assert meter.current == 8000
        del a
        assert meter.current == 8000  # the view keeps the storage alive
        del view
        assert meter.current == 4000
        b.add_(1)  # in place: no new storage
        c = torch.ones(250)  # 1000 B
        assert meter.current == 5000
        del b, c
    assert meter.current == 0
    assert meter.peaks == {"start": 8000}


def test_weights_are_not_counted_even_when_an_op_returns_them() -> None:
    linear = torch.nn.Linear(8, 16)
    meter = LiveTensorBytes("cpu", weights=(linear,))
    with meter, torch.no_grad():
        x = torch.zeros(4, 8)  # 128 B
        y = linear(x)  # 256 B; weight.t() inside is a view of the weight
        same = linear.weight.to(torch.float32)  # returns the weight itself
        assert same.untyped_storage().data_ptr() == linear.weight.untyped_storage().data_ptr()
        assert meter.current == 128 + 256
        del x, y, same
    assert meter.current == 0
    assert weight_bytes(linear) == (16 * 8 + 16) * 4


def test_phase_peaks_start_from_what_is_already_live() -> None:
    meter = LiveTensorBytes("cpu", weights=())
    kept = torch.zeros(100)  # made before the block: counted only once added
    with meter:
        meter.add(kept)
        meter.enter_phase("encode")
        temporary = torch.zeros(1000)
        del temporary
        meter.enter_phase("sample")
        result = kept * 2
    assert meter.peaks == {"start": 400, "encode": 400 + 4000, "sample": 800}
    assert meter.current == 800
    del result


def test_tensors_on_other_devices_are_ignored() -> None:
    meter = LiveTensorBytes("cuda", weights=())
    with meter:
        x = torch.zeros(1000)
    assert meter.current == 0 and meter.peaks == {}
    del x


def test_weight_bytes_counts_tied_storages_once() -> None:
    embedding = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight  # tied, as T5-style models tie input and output embeddings
    model = torch.nn.ModuleDict({"embedding": embedding, "head": head})
    assert weight_bytes(model) == 10 * 4 * 4
