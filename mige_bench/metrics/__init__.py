"""Metric registry: id -> ``"module:Class"``, imported lazily. Any ``module:Class`` path works too.

Every class is constructed as ``cls(backbones, **binding)`` where ``binding`` comes from the task YAML (documented in
each class docstring) and declares ``backbones_used`` (the names of :class:`~mige_bench.metrics.backbones.Backbones`
it loads), so a runner can check weights with ``Backbones.ensure_available`` before generating.
"""

METRICS: dict[str, str] = {
    "dino": "mige_bench.metrics.similarity:DinoSimilarity",
    "clip_i": "mige_bench.metrics.similarity:ClipImageSimilarity",
    "clip_t": "mige_bench.metrics.similarity:ClipTextSimilarity",
    "clip_dir": "mige_bench.metrics.similarity:ClipDirectionalSimilarity",
    "l1": "mige_bench.metrics.pixel:L1Distance",
    "l2": "mige_bench.metrics.pixel:L2Distance",
    "lpips": "mige_bench.metrics.pixel:LpipsDistance",
}
