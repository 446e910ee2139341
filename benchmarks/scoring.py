"""Scoring speed and memory: the per-image loop of the official scripts vs mige-bench's fast path (issue #7).

Everything is measured in one run, on one machine, on the same DreamBench-size JPEGs (the real DreamBench photos
from ../shared/data/dreambench when present, else synthesised JPEGs of the same sizes), through the same real-size,
randomly initialised backbones (CLIP ViT-B/32 and DINO ViT-S/16 built from their configs and loaded through the
harness's own loader). A task of N samples compares each output with its own reference image (DINO and CLIP-I);
model A and model B are two sets of N outputs for the same task. "Images" below count every image that goes
through both encoders (N outputs + N references for a cold run).

    .venv/bin/python benchmarks/scoring.py --images 48

Figures: (a) per-image loop written like MagicBrush's image_eval.py (per metric: open both images, preprocess,
forward one image at a time); (b) decode + preprocess alone; (c) batched forward alone; (d) the ideal pipeline rate
1 / (1/b + 1/c); (e) the harness's scoring, cold cache; (f) scoring model B with the reference cache warm;
(g) max |score difference| between (e) and (a); (h) peak memory of (a) and (e).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mige_bench.images import ImageRef
from mige_bench.metrics import functional
from mige_bench.metrics.backbones import DINO_LAYER_NORM_EPS, Backbones, smoke_clip_tokenizer
from mige_bench.metrics.embedding_cache import EmbeddingCache
from mige_bench.runner import ExecutionOptions, score_images
from mige_bench.sample import ModelInputs, Sample, sample_digests
from mige_bench.task import parse_task

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "dreambench" / "dataset"
DREAMBENCH_SIDES = (2048, 1280, 1440, 2048, 1282, 1920, 1280, 1440)
"""Square sizes of the synthesised stand-ins, in the proportions of the real DreamBench photos."""

TASK = {
    "name": "scoring_benchmark",
    "protocol": "speed",
    "version": 1,
    "kind": "edit",
    "loader": "demo",
    "primary_metric": "dino",
    "metrics": {"dino": {"against": "target_image"}, "clip_i": {"against": "target_image"}},
}


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def jpeg_files(count: int, scratch: Path) -> tuple[list[Path], str]:
    """``count`` DreamBench JPEGs (interleaved over subjects), or synthesised JPEGs of DreamBench sizes."""
    if DREAMBENCH.is_dir():
        files = sorted(DREAMBENCH.rglob("*.jpg"))
        if len(files) >= count:
            step = len(files) / count
            return [files[int(index * step)] for index in range(count)], f"real DreamBench JPEGs from {DREAMBENCH}"
    folder = scratch / "synthetic"
    folder.mkdir()
    files = []
    for index in range(count):
        side = DREAMBENCH_SIDES[index % len(DREAMBENCH_SIDES)]
        rng = np.random.default_rng(index)
        # Smooth colour fields plus mild noise compress like photos (about DreamBench's bytes per pixel).
        low = rng.integers(0, 256, (side // 64, side // 64, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC)
        pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (side, side, 3))
        files.append(folder / f"{index:03d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(files[-1], quality=90)
    return files, "synthesised JPEGs of DreamBench sizes (../shared/data/dreambench not found)"


def real_size_backbones(folder: Path) -> dict[str, str]:
    """Saves randomly initialised CLIP ViT-B/32 and DINO ViT-S/16 (their published configs) as local backbones."""
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    clip_config = CLIPConfig(
        vision_config={"image_size": 224, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072,
                       "num_hidden_layers": 12, "num_attention_heads": 12},
        projection_dim=512,
    )  # fmt: skip
    CLIPModel(clip_config).save_pretrained(folder / "clip")
    smoke_clip_tokenizer().save_pretrained(folder / "clip")  # any tokenizer: only image features are timed
    dino_config = ViTConfig(
        image_size=224, patch_size=16, hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
        num_attention_heads=6, layer_norm_eps=DINO_LAYER_NORM_EPS,
    )  # fmt: skip
    ViTModel(dino_config, add_pooling_layer=False).save_pretrained(folder / "dino")
    return {"clip": str(folder / "clip"), "dino": str(folder / "dino"), "lpips": "smoke"}


def write_run(folder: Path, outputs: list[Path]) -> Path:
    """A run folder whose ``images/`` holds the given JPEG files as the outputs of samples ``s000``, ``s001``, ...

    The harness names outputs ``<id>.png``; PIL decodes by content, so these stay JPEGs, as in the issue's setup.
    """
    images = folder / "images"
    images.mkdir(parents=True)
    for index, source in enumerate(outputs):
        shutil.copyfile(source, images / f"s{index:03d}.png")
    return folder


def make_samples(references: list[Path]) -> list[Sample]:
    return [
        Sample(
            id=f"s{index:03d}",
            kind="edit",
            inputs=ModelInputs(prompt="benchmark"),
            references={"target_image": ImageRef(path=path)},
        )
        for index, path in enumerate(references)
    ]


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return children


@contextmanager
def peak_memory(record: dict[str, float]) -> Iterator[None]:
    """Samples the proportional set size (PSS) of this process plus its worker processes every 50 ms (PSS, not RSS:
    forked workers share the parent's pages); stores the peak in MiB, and CUDA's max allocated when on a GPU."""
    stop = threading.Event()
    peak = [0]

    def sample() -> None:
        while not stop.is_set():
            me = os.getpid()
            peak[0] = max(peak[0], _pss_kib(me) + sum(_pss_kib(child) for child in _children(me)))
            stop.wait(0.05)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        record["pss_mib"] = peak[0] / 1024
        if torch.cuda.is_available():
            record["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def per_image_loop(backbones: Backbones, outputs: list[Path], references: list[Path]) -> dict[str, list[float]]:
    """MagicBrush's image_eval.py shape: one pass per metric; per pair, open both images, preprocess each, run the
    network on one image at a time, take the cosine. Preprocessing is the protocol's (the same code as the fast
    path), so the two give the same numbers."""
    scores: dict[str, list[float]] = {}
    for metric, encoder in (("dino", backbones.dino), ("clip_i", backbones.clip)):
        scores[metric] = []
        for output, reference in zip(outputs, references, strict=True):
            generated = encoder.encode_images([ImageRef(path=output).open()]).numpy()
            target = encoder.encode_images([ImageRef(path=reference).open()]).numpy()
            scores[metric].append(float(functional.cosine_similarity(generated, target)[0]))
    return scores


def decode_and_preprocess(backbones: Backbones, files: list[Path]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Decode once, then both protocol preprocessings, one image after another in this process."""
    return [
        (backbones.clip.preprocessing([image], "hf"), backbones.dino.preprocessing([image], "hf"))
        for image in (ImageRef(path=file).open() for file in files)
    ]


def batched_forward(backbones: Backbones, pixels: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    backbones.clip.embed_pixels(torch.cat([clip for clip, _ in pixels]))
    backbones.dino.embed_pixels(torch.cat([dino for _, dino in pixels]))


def warm_up(backbones: Backbones) -> None:
    """One forward at batch 1 and one at a full batch per encoder, so no figure pays one-time kernel set-up."""
    for encoder in (backbones.clip, backbones.dino):
        pixels = torch.zeros(encoder.batch_size, 3, encoder.preprocessing.crop, encoder.preprocessing.crop)
        encoder.embed_pixels(pixels[:1])
        encoder.embed_pixels(pixels)


def fast_path(
    run_dir: Path, samples: list[Sample], spec: dict[str, str], device: str, cache_root: Path, workers: int | None
) -> tuple[dict[str, list[float]], Backbones]:
    """The harness's scoring of a run folder, by a fresh ``Backbones`` (nothing in memory; the disk cache given)."""
    backbones = Backbones(spec, device=device)
    backbones.use_embedding_cache(EmbeddingCache(cache_root))
    backbones.load(["clip", "dino"])
    options = ExecutionOptions(batch_size=32, device=device, progress=False)
    digests = sample_digests(samples)
    lines = score_images(run_dir, parse_task(TASK), samples, digests, 1, backbones, options, decode_workers=workers)
    by_id = {line["sample_id"]: line["scores"] for line in lines}
    scores = {metric: [by_id[sample.id][metric] for sample in samples] for metric in ("dino", "clip_i")}
    return scores, backbones


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="samples N (each: one output, one reference)")
    parser.add_argument("--decode-workers", type=int, help="decoding processes (default: the harness's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    n = args.images

    with tempfile.TemporaryDirectory(prefix="mige-scoring-bench-") as scratch_name:
        scratch = Path(scratch_name)
        files, origin = jpeg_files(3 * n, scratch)
        references, outputs_a, outputs_b = files[0::3], files[1::3], files[2::3]
        samples = make_samples(references)
        run_a, run_b = write_run(scratch / "model_a", outputs_a), write_run(scratch / "model_b", outputs_b)
        spec = real_size_backbones(scratch / "backbones")
        backbones = Backbones(spec, device=args.device)
        backbones.load(["clip", "dino"])
        print(f"images: {origin}; N = {n} samples; device {args.device}; torch threads {torch.get_num_threads()}; "
              f"cores {os.cpu_count()}; random-weight real-size CLIP ViT-B/32 + DINO ViT-S/16")  # fmt: skip
        warm_up(backbones)

        both = outputs_a + references
        loop_seconds, loop_scores = timed(lambda: per_image_loop(backbones, outputs_a, references))
        decode_seconds, preprocessed = timed(lambda: decode_and_preprocess(backbones, both))
        forward_seconds, _ = timed(lambda: batched_forward(backbones, preprocessed))
        preprocessed.clear()
        cache = scratch / "cache"
        cold_seconds, (fast_scores, cold) = timed(
            lambda: fast_path(run_a, samples, spec, args.device, cache, args.decode_workers)
        )
        warm_seconds, (_, warm) = timed(
            lambda: fast_path(run_b, samples, spec, args.device, cache, args.decode_workers)
        )

        # Memory apart from timing: sampling /proc/*/smaps_rollup takes the process's memory-map lock and would slow
        # the timed passes.
        loop_memory: dict[str, float] = {}
        with peak_memory(loop_memory):
            per_image_loop(backbones, outputs_a, references)
        (run_a / "scores.jsonl").unlink()
        fast_memory: dict[str, float] = {}
        with peak_memory(fast_memory):
            fast_path(run_a, samples, spec, args.device, scratch / "cold cache again", args.decode_workers)

    images = 2 * n
    loop_rate, decode_rate, forward_rate = images / loop_seconds, images / decode_seconds, images / forward_seconds
    ideal = 1 / (1 / decode_rate + 1 / forward_rate)
    cold_rate = images / cold_seconds
    difference = max(
        float(np.max(np.abs(np.asarray(fast_scores[metric]) - np.asarray(loop_scores[metric]))))
        for metric in ("dino", "clip_i")
    )
    print(f"(a) per-image loop (MagicBrush style)      {loop_rate:7.2f} img/s   ({loop_seconds:.1f} s)")
    print(f"(b) decode + preprocess alone              {decode_rate:7.2f} img/s")
    print(f"(c) batched forward alone (both encoders)  {forward_rate:7.2f} img/s")
    print(f"(d) ideal pipeline 1/(1/b + 1/c)           {ideal:7.2f} img/s   = {ideal / loop_rate:.2f}x loop")
    print(f"(e) fast path, cold cache                  {cold_rate:7.2f} img/s   = {cold_rate / ideal:.0%} of ideal "
          f"(target >= 90%), {cold_rate / loop_rate:.2f}x loop; encoded {dict(cold.features.encoded)}")  # fmt: skip
    print(f"(f) second model, reference cache warm     {warm_seconds:7.2f} s       = {warm_seconds / cold_seconds:.0%} "
          f"of the first run (target <= 55%); encoded {dict(warm.features.encoded)}")  # fmt: skip
    print(f"(g) max |score difference| fast vs loop    {difference:.2e}  (target <= 1e-6)")
    print(f"(h) peak memory (PSS incl. workers)        loop {loop_memory['pss_mib']:.0f} MiB, "
          f"fast path {fast_memory['pss_mib']:.0f} MiB")  # fmt: skip
    if "cuda_max_allocated_mib" in fast_memory:
        print(f"    CUDA max allocated                     loop {loop_memory['cuda_max_allocated_mib']:.0f} MiB, "
              f"fast path {fast_memory['cuda_max_allocated_mib']:.0f} MiB; GPU target: (e) >= 10x (a)")  # fmt: skip
    print("half precision: off (no GPU measured; fp16 is not used by the harness)")


if __name__ == "__main__":
    main()
