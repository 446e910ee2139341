"""``mige``: the reference MIGE re-implementation (``reference_model``) as a generator.

``--model mige --model-args weights=<converted folder or hub id>[,steps=..,guidance=..,source_guidance=..,dtype=..,
offload=1,noise=original]``. The weights are a ``MIGEPipeline`` folder made from the official release by
``mige-bench convert-mige`` (see ``reference_model/README.md``).

How a sample becomes MIGE's multimodal instruction depends only on its kind and :class:`ModelInputs`:

* ``subject``: the multimodal prompt (``a<imagehere>in the jungle``) with its placeholder images as references;
* ``edit``: the plain instruction, the source image as the only reference, and ``edit_type`` for MIGE's
  ``update_instruction`` rewrite (Emu Edit's ``global`` task appends ``of<imagehere>``);
* ``subject_edit``: the multimodal prompt, its placeholder images, and the source image.

Seeding: every output image draws its posterior and initial noise from a CPU generator seeded with the runner's
per-image seed, so images do not depend on batch size, order or device. ``noise=original`` opts into the original
scripts' draws instead (one CPU stream for the posterior noise, one device-RNG tensor per batch for the initial noise,
both positioned like the scripts' after ``set_env(0)`` and the model constructor, see
``reference_model/original_rng.py``; the constructor replay costs about a minute before the first batch). Outputs
then depend on ``--batch-size``, sample order and everything generated before in the same process, exactly as the
original's do: they match the scripts only for a fresh, unsharded run over the scripts' items in their order, with
their batch size, on the same GPU model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.models.base import Generator
from mige_bench.paths import mige_bench_home
from mige_bench.sample import Sample

logger = logging.getLogger(__name__)

# No fp16: the release runs bf16 (spec §1.11: bf16-rounded timesteps, bf16 guidance, fp32 ViT residual stream from
# bf16 weights under fp16 autocast), and T5-v1.1-XXL is known to overflow in fp16.
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
NOISE_MODES = ("per_image", "original")


def default_weights_folder() -> Path:
    """Where the converted pipeline is looked for when ``weights`` is not given: ``$MIGE_BENCH_HOME/models/mige``."""
    return mige_bench_home() / "models" / "mige"


class MIGEGenerator(Generator):
    """Runs :class:`reference_model.pipeline_mige.MIGEPipeline`; see the module docstring.

    Args:
        weights: Converted pipeline folder or hub id of a converted pipeline (default
            ``$MIGE_BENCH_HOME/models/mige``).
        steps: Solver steps for every kind (default per kind: 50 subject, 60 editing).
        guidance: Instruction guidance scale (default 7 subject, 5 editing).
        source_guidance: Source guidance scale of the editing kinds (default 1).
        dtype: ``bf16`` or ``fp32`` for the DiT and encoder (default bf16 on GPU, fp32 on CPU; bf16 reproduces the
            original's precision regime only on CUDA, where the ViT runs under fp16 autocast); the VAE
            always runs in fp32, as in the original.
        offload: ``1`` keeps the multimodal encoder (T5-XXL) on CPU except while it encodes.
        noise: ``per_image`` (default) or ``original``.
        device: Torch device, passed by the runner.
    """

    name = "mige"

    def __init__(
        self,
        weights: str | None = None,
        steps: str | None = None,
        guidance: str | None = None,
        source_guidance: str | None = None,
        dtype: str | None = None,
        offload: str = "0",
        noise: str = "per_image",
        device: str = "cpu",
    ) -> None:
        self.weights = weights or str(default_weights_folder())
        self.device = torch.device(device)
        self.dtype_name = dtype or ("fp32" if self.device.type == "cpu" else "bf16")
        if self.dtype_name not in DTYPES:
            raise MigeBenchError(f"dtype={self.dtype_name!r} is not one of {', '.join(DTYPES)}.")
        if noise not in NOISE_MODES:
            raise MigeBenchError(f"noise={noise!r} is not one of {', '.join(NOISE_MODES)}.")
        if offload not in ("0", "1"):
            raise MigeBenchError(f"offload={offload!r} must be 1 or 0.")
        self.noise = noise
        self.offload = offload == "1"
        self.call_settings = {
            "num_inference_steps": _parse_number("steps", steps, int),
            "guidance_scale": _parse_number("guidance", guidance, float),
            "source_guidance_scale": _parse_number("source_guidance", source_guidance, float),
        }
        self.pipe = self._load()
        self._original_rng: Any = None  # OriginalScriptsRNG, built before the first batch (the replay takes a minute)

    @property
    def settings(self) -> dict[str, Any]:
        from reference_model.scheduling_mige import TASK_SAMPLING_DEFAULTS

        defaults = {kind: vars(settings) for kind, settings in TASK_SAMPLING_DEFAULTS.items()}
        return {
            "weights": self.weights,
            "dtype": self.dtype_name,
            "vae_dtype": "fp32",
            "offload_encoder": self.offload,
            "noise": self.noise,
            "overrides": {key: value for key, value in self.call_settings.items() if value is not None},
            "task_defaults": defaults,
            "seeding": (
                "one CPU torch.Generator per output image (posterior noise, then initial noise)"
                if self.noise == "per_image"
                else "original scripts (seed 0, constructor RNG replayed): one CPU stream for posterior noise, "
                "one device-RNG tensor per batch"
            ),
        }

    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        images: list[Image.Image] = []
        start = 0
        while start < len(samples):
            kind = samples[start].kind
            stop = start
            while stop < len(samples) and samples[stop].kind == kind:
                stop += 1
            images.extend(self._generate_kind(samples[start:stop], seeds[start:stop]))
            start = stop
        return images

    # -- one call per run of same-kind samples --------------------------------------------------------------------

    def _generate_kind(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        kind = samples[0].kind
        requests = [mige_request(sample) for sample in samples]
        if self.noise == "per_image":
            generator: Any = [torch.Generator().manual_seed(seed) for seed in seeds]
        else:
            generator = self._original_scripts_rng()
        return self.pipe(
            [request["prompt"] for request in requests],
            kind=kind,
            reference_images=None if kind == "edit" else [request["references"] for request in requests],
            source_image=None if kind == "subject" else [request["source"] for request in requests],
            edit_task=[request["edit_task"] for request in requests],
            generator=generator,
            noise=self.noise,
            **{key: value for key, value in self.call_settings.items() if value is not None},
        ).images

    # -- loading --------------------------------------------------------------------------------------------------

    def _load(self) -> Any:
        from reference_model.convert_mige_checkpoint import RELEASE_HUB_ID
        from reference_model.pipeline_mige import MIGEPipeline

        dtype = DTYPES[self.dtype_name]
        if self.weights == RELEASE_HUB_ID:
            raise MigeBenchError(
                f"{RELEASE_HUB_ID} holds the original-format release, not a pipeline. {_how_to_convert()}"
            )
        local = Path(self.weights).expanduser()
        if local.exists() and not (local / "model_index.json").is_file():
            raise MigeBenchError(f"{local} is not a converted MIGE pipeline (no model_index.json). {_how_to_convert()}")
        source = str(local) if local.exists() else self.weights
        if not local.exists() and (self.weights.startswith((".", "/", "~")) or self.weights.count("/") != 1):
            raise MigeBenchError(f"MIGE weights not found at {self.weights}. {_how_to_convert()}")
        try:
            pipe = MIGEPipeline.from_pretrained(
                source, dtype={"default": dtype, "vae": torch.float32}, local_files_only=True
            )
        except OSError as error:  # hub errors, missing files and offline mode all derive from OSError
            raise MigeBenchError(f"Cannot load MIGE weights {self.weights!r} ({error}). {_how_to_convert()}") from error
        if self.offload:
            pipe.transformer.to(self.device)
            pipe.vae.to(self.device)
            pipe.enable_encoder_offload()
        else:
            pipe.to(self.device)
        logger.info("loaded MIGE from %s (%s on %s)", source, self.dtype_name, self.device)
        return pipe

    def _original_scripts_rng(self) -> Any:
        """The scripts' two random streams, seeded and replayed once, then continued from batch to batch."""
        if self._original_rng is None:
            from reference_model.original_rng import OriginalScriptsRNG

            logger.info("noise=original: replaying the original constructor's CPU RNG draws (about a minute)")
            self._original_rng = OriginalScriptsRNG.seeded(device=self.device, show_progress=True)
        return self._original_rng


def mige_request(sample: Sample) -> dict[str, Any]:
    """MIGE's inputs for one sample, from :class:`ModelInputs` and the kind alone.

    Returns:
        ``prompt`` (raw instruction or multimodal prompt), ``references`` (PIL images in marker order), ``source``
        (PIL image or ``None``) and ``edit_task``.

    Raises:
        MigeBenchError: The sample lacks what its kind needs (a multimodal prompt, a source image).
    """
    inputs = sample.inputs
    if sample.kind == "edit":
        if inputs.source_image is None:
            raise MigeBenchError(f"MIGE edits a source image and sample {sample.id} has none.")
        return {
            "prompt": inputs.prompt,
            "references": [],
            "source": inputs.source_image.open(),
            "edit_task": inputs.edit_type or "local",
        }
    if inputs.multimodal_prompt is None:
        raise MigeBenchError(
            f"MIGE places reference images through <imagehere> markers, and sample {sample.id} ({sample.kind}) has "
            "no multimodal prompt; use the task variant that defines one (e.g. dreambench_mige)."
        )
    if sample.kind == "subject_edit" and inputs.source_image is None:
        raise MigeBenchError(f"MIGE subject-driven editing needs a source image and sample {sample.id} has none.")
    return {
        "prompt": inputs.multimodal_prompt,
        "references": [image.open() for image in inputs.placeholder_images],
        "source": inputs.source_image.open() if sample.kind == "subject_edit" else None,
        "edit_task": "local",
    }


def _how_to_convert() -> str:
    from reference_model.convert_mige_checkpoint import RELEASE_HUB_ID, release_download_command

    target = default_weights_folder()
    return (
        f"Download the official release from https://huggingface.co/{RELEASE_HUB_ID}: model.pth and the folders "
        "t5-v1_1-xxl (config.json + tokenizer files), bert-base-uncased (config.json) and sd-vae-ft-ema, e.g. "
        f"`{release_download_command(Path('mige_release'))}`; "
        f"convert it with `mige-bench convert-mige --release mige_release --out {target}`; then run with "
        f"--model-args weights={target} (or leave weights out to use that folder)."
    )


def _parse_number(name: str, text: str | None, kind: type) -> Any:
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise MigeBenchError(f"{name}={text!r} is not a valid {kind.__name__}.") from None
