"""The metric plug-in point: one class per metric, one method, ``score``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

if TYPE_CHECKING:
    from mige_bench.sample import Sample


@dataclass(frozen=True)
class Excluded:
    """A score that is undefined for this output by protocol (never NaN-averaged); ``reason`` is counted in results."""

    reason: str


Score = float | Excluded


class Metric(ABC):
    """A thin owner of an encoder and its pinned preprocessing; the math lives in ``metrics/functional.py``.

    Subclasses set ``name``/``higher_is_better`` and take their protocol binding (from the task YAML, e.g.
    ``against: target_image``) as keyword arguments of ``__init__`` after ``backbones``. Unknown binding keys must
    raise ``TypeError`` (the runner turns that into a clear message).

    ``counters`` holds protocol events worth reporting that are not exclusions (e.g.
    ``outputs_with_truncated_caption`` for CLIP-T); the runner adds them to the results file.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    backbones_used: ClassVar[tuple[str, ...]] = ()
    """Backbones (``clip``, ``dino``, ``lpips``) this metric loads, checked before any work starts."""
    accepts_image_refs: ClassVar[bool] = False
    """When ``True``, ``score`` receives the output files (``ImageRef``) rather than decoded images, and
    :meth:`image_requests` announces what it will encode, so the runner decodes in worker processes and encodes each
    image once per backbone however many metrics use it."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def provenance(self) -> dict[str, Any]:
        """Models or settings this metric uses beyond the shared backbones (e.g. an entity detector's weight hashes);
        recorded in ``results.json`` and part of the scoring key. Empty by default."""
        return {}

    def image_requests(self, outputs: Sequence[Any], samples: Sequence[Sample]) -> list[Any]:
        """The encoder inputs ``score`` will need for these outputs (only for ``accepts_image_refs`` metrics)."""
        return []

    @abstractmethod
    def score(self, outputs: Sequence[Image.Image], samples: Sequence[Sample]) -> list[Score]:
        """Scores ``outputs[i]`` (an RGB image) for ``samples[i]``; one score per output, in order."""
