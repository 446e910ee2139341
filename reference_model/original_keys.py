"""Strict renaming of an original MIGE state dict onto this package's modules.

The original loads its checkpoint with ``strict=False``, which silently leaves a random null caption in place when a
key is missing. Here every key of the part being converted must map, every key the target module has must be
produced, and every shape must match; all problems are collected and reported together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

logger = logging.getLogger(__name__)


def remap_original_state_dict(
    original_state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    belongs: Callable[[str], bool],
    rename: Callable[[str], str | None],
    part: str,
    problems: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Renames the keys of one part (DiT or multimodal encoder) of an original state dict, strictly.

    Args:
        original_state_dict: The whole original ``MIGE.state_dict()``; keys of other parts are ignored.
        expected: The target module's ``state_dict()`` (may be on the ``meta`` device: only names and shapes are read).
        belongs: Whether an original key is part of this conversion.
        rename: Original key -> target key; ``None`` drops a key on purpose; ``KeyError`` marks an unknown key.
        part: Name used in the error message (``"DiT"``, ``"multimodal-encoder"``).
        problems: Problems already found by the caller (e.g. untied weights), reported together with these.

    Returns:
        State dict for ``load_state_dict(..., strict=True)``; tensors as given (no dtype change).

    Raises:
        ValueError: Listing every unmapped, duplicate, missing or wrongly shaped key.
    """
    problems = list(problems or [])
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in original_state_dict.items():
        if not belongs(key):
            continue
        try:
            new_key = rename(key)
        except KeyError as error:
            problems.append(str(error.args[0]))
            continue
        if new_key is None:
            continue
        if new_key not in expected:
            problems.append(f"original key {key!r} maps to {new_key!r}, which the model does not have")
        elif tuple(tensor.shape) != tuple(expected[new_key].shape):
            problems.append(f"shape of {key!r} {tuple(tensor.shape)} != {new_key!r} {tuple(expected[new_key].shape)}")
        if new_key in converted:
            problems.append(f"two original keys map to {new_key!r}")
        converted[new_key] = tensor
    problems.extend(f"missing from the original state dict: {key!r}" for key in expected if key not in converted)
    if problems:
        raise ValueError(f"{len(problems)} {part} key problem(s):\n  " + "\n  ".join(problems))
    logger.debug("mapped %d original %s tensors", len(converted), part)
    return converted
