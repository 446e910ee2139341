"""Peak tensor memory of a computation, measured on any device: what a GPU would need, measured on CPU.

``benchmarks/mige_generation.py`` uses it where no GPU is available to tell how much device memory the full-size MIGE
needs with and without encoder offload.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storage on one device type, and the peak reached in each named phase.

    It counts what ``torch.cuda.max_memory_allocated`` counts — every tensor storage alive at the same time, views
    sharing their base's storage counted once — without the CUDA caching allocator's 512-byte rounding, so the
    memory a computation needs on a GPU can be measured by running it on CPU. Storages made before the block
    (inputs) count only once passed to :meth:`add`; the weights' storages are never counted (ops such as ``t()`` or
    a same-dtype ``to()`` return them as outputs), since their bytes are added per phase by the caller. Torch keeps
    a storage's Python object alive exactly as long as the storage, so the finalizer on it runs when the memory is
    freed.

    Args:
        device_type: The device whose tensors are counted (``"cpu"``, ``"cuda"``).
        weights: Modules whose parameters and buffers are not counted.
    """

    def __init__(self, device_type: str, weights: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, int] = {  # storage address -> bytes; weights pinned at 0 bytes
            tensor.untyped_storage()._cdata: 0 for module in weights for tensor in module.state_dict().values()
        }
        self.current = 0
        self.phase = "start"
        self.peaks: dict[str, int] = {}

    def add(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if tensor.device.type != self.device_type or storage._cdata in self.live:
                continue
            self.live[storage._cdata] = storage.nbytes()
            self.current += storage.nbytes()
            weakref.finalize(storage, self._release, storage._cdata)
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self.current)

    def enter_phase(self, name: str) -> None:
        self.phase = name
        self.peaks[name] = max(self.peaks.get(name, 0), self.current)

    def _release(self, address: int) -> None:
        self.current -= self.live.pop(address)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        self.add(*(value for value in tree_flatten(output)[0] if isinstance(value, torch.Tensor)))
        return output


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, shared storages counted once."""
    storages = {
        tensor.untyped_storage()._cdata: tensor.untyped_storage().nbytes() for tensor in module.state_dict().values()
    }
    return sum(storages.values())
