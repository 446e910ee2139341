"""The random-number timeline of the original inference scripts, replayed (spec §3.1.3).

What the scripts do after ``set_env(0)`` (identical in all three)::

    torch.manual_seed(0)                        CPU and CUDA generators seeded
    30 × torch.randn(1, 4, 512, 512) on CPU     burn-in: 31,457,280 MT19937 outputs
    MIGE_XL_2(...) built on CPU, fp32           random init of every module: 18,897,201,440 outputs
    load_state_dict / .to()                     no RNG
    per item, per reference (then MIGEBench's source):  torch.randn(4, 64, 64) on CPU = VAE posterior ε
    per batch: torch.randn(B, 4, 64, 64) on CUDA  initial noise z

Our pipeline builds its modules differently (HF classes, meta device, bf16), so it never consumes that constructor
stream; :meth:`OriginalScriptsRNG.seeded` advances a CPU generator by exactly the constructor's count instead. The
count is the sum of ``numel`` over the 2,245 init calls listed in ``mige_init_rng_trace.tsv``: under torch's CPU
semantics a float32 ``uniform_`` consumes one 32-bit output per element, and a float32 ``normal_``/``randn`` of at
least 16 elements consumes ``numel`` outputs when ``numel % 16 == 0`` (true of every call in the trace), so drawing
``uniform_`` over scratch buffers of any chunking lands on the same generator state.

The CPU generator and the device generator are separate objects here rather than torch's global ones, so nothing
else in the process (a library that initialises a module, a data loader) can shift the stream between draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

ORIGINAL_SEED = 0
# set_env: 30 × torch.randn(1, 4, 512, 512) on CPU straight after seeding.
BURN_IN_DRAWS = 30
BURN_IN_SHAPE = (1, 4, 512, 512)
# MT19937 outputs consumed by the original MIGE_XL_2 constructor (sum of numel over mige_init_rng_trace.tsv, with the
# torch-2.1.1 uniform-based trunc_normal_ for the FFM, which the released scripts ran under).
CONSTRUCTOR_RNG_OUTPUTS = 18_897_201_440
# 64 MiB of float32 scratch per uniform_ call: large enough that the Python loop costs nothing, small enough for CI.
_ADVANCE_CHUNK = 1 << 24


def advance_cpu_generator(generator: torch.Generator, outputs: int, show_progress: bool = False) -> None:
    """Consume exactly ``outputs`` MT19937 32-bit outputs of a CPU ``generator`` (float32 ``uniform_`` in chunks).

    About 55 s per 1.9e10 outputs on one CPU core; the generator is inherently sequential.
    """
    if generator.device.type != "cpu":
        raise ValueError(f"only CPU (MT19937) generators can be advanced, got a {generator.device.type} generator")
    if outputs < 0:
        raise ValueError(f"cannot advance a generator by a negative count ({outputs})")
    scratch = torch.empty(min(outputs, _ADVANCE_CHUNK), dtype=torch.float32)
    with tqdm(
        total=outputs, unit="draw", unit_scale=True, desc="replaying MIGE's init RNG", disable=not show_progress
    ) as bar:
        left = outputs
        while left:
            step = min(left, _ADVANCE_CHUNK)
            scratch[:step].uniform_(generator=generator)
            left -= step
            bar.update(step)


@dataclass
class OriginalScriptsRNG:
    """The two generators of the scripts' draws, positioned where the scripts are when preprocessing starts.

    Attributes:
        posterior: CPU generator for the VAE posterior ε (the scripts' global CPU RNG).
        initial_noise: Generator on the execution device for the per-batch initial noise (the scripts' CUDA RNG).
    """

    posterior: torch.Generator
    initial_noise: torch.Generator

    @classmethod
    def seeded(
        cls,
        seed: int = ORIGINAL_SEED,
        device: str | torch.device = "cpu",
        replay_constructor: bool = True,
        show_progress: bool = False,
    ) -> OriginalScriptsRNG:
        """``set_env(seed)``, then (by default) the original constructor's CPU draws.

        Args:
            seed: The scripts' seed (always 0 in the release).
            device: Where the initial noise is drawn (the scripts: CUDA; CUDA ``randn`` also depends on the GPU
                model for large batches, spec §3.1.3).
            replay_constructor: Advance the CPU generator past the constructor's 1.9e10 draws (~1 min). Without
                it, the posterior ε are those of a run whose model consumed no RNG, i.e. not the scripts'.
            show_progress: Progress bar for the replay.
        """
        posterior = torch.Generator().manual_seed(seed)
        for _ in range(BURN_IN_DRAWS):
            torch.randn(BURN_IN_SHAPE, generator=posterior)
        if replay_constructor:
            advance_cpu_generator(posterior, CONSTRUCTOR_RNG_OUTPUTS, show_progress=show_progress)
        return cls(posterior=posterior, initial_noise=torch.Generator(torch.device(device)).manual_seed(seed))
