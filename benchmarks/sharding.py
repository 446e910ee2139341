"""Generation throughput versus shard count, with shards as separate CPU processes.

Each shard is a real ``mige-bench run --shard i/n`` process writing into one run folder; the generator does a fixed
amount of CPU work per image (a small convolution stack, one torch thread), standing in for a model. The script
prints images/s for 1..N shards and the ratio to one shard, measured in one run on this machine.

    .venv/bin/python benchmarks/sharding.py --images 48 --max-shards 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PLUGIN = textwrap.dedent(
    """
    import numpy as np
    import torch
    from PIL import Image

    from mige_bench.models.base import Generator

    torch.set_num_threads(1)


    class ConvWork(Generator):
        name = "conv_work"

        def __init__(self):
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(*[torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(6)])

        @torch.no_grad()
        def generate(self, samples, seeds):
            images = []
            for seed in seeds:
                generator = torch.Generator().manual_seed(seed % 2**31)
                x = torch.randn(1, 16, 256, 256, generator=generator)
                for _ in range(4):
                    x = torch.tanh(self.net(x))
                pixels = ((x[0, :3] + 1) * 127.5).clamp(1, 255).byte().permute(1, 2, 0).numpy()
                images.append(Image.fromarray(np.ascontiguousarray(pixels)))
            return images
    """
)


def run_sharded(shards: int, images_per_sample: int, workdir: Path, env: dict[str, str]) -> float:
    out = workdir / f"shards{shards}"
    command = [
        sys.executable, "-m", "mige_bench", "run", "--task", "demo", "--model", "bench_plugin:ConvWork",
        "--images-per-sample", str(images_per_sample), "--out", str(out), "--no-score", "--no-progress",
    ]  # fmt: skip
    started = time.perf_counter()
    processes = [
        subprocess.Popen([*command, "--shard", f"{index}/{shards}"], env=env, stdout=subprocess.DEVNULL)
        if shards > 1
        else subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        for index in range(shards)
    ]
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("a shard failed")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="total images (demo has 6 samples)")
    parser.add_argument("--max-shards", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    images_per_sample = max(1, args.images // 6)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_plugin.py").write_text(PLUGIN)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")])}
        total = images_per_sample * 6
        baseline = None
        print(f"{total} images, demo task, CPU processes (wall time includes process start-up)")
        print(f"{'shards':>6} {'seconds':>8} {'img/s':>7} {'vs 1 shard':>10}")
        for shards in range(1, args.max_shards + 1):
            seconds = run_sharded(shards, images_per_sample, workdir, env)
            rate = total / seconds
            baseline = baseline or rate
            print(f"{shards:>6} {seconds:>8.2f} {rate:>7.2f} {rate / baseline:>9.2f}x")


if __name__ == "__main__":
    main()
