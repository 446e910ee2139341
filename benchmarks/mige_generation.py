"""MIGE generation cost: the original scripts' scheme vs ``MIGEPipeline``, at equal outputs.

The original recomputes the whole multimodal conditioning (EVA ViT + Q-Former + FFM on all 4 reference slots, padding
included, then the T5-XXL encoder, then the DiT's caption projection and every block's cross-attention keys and
values) inside every denoising step; the pipeline computes it once per image, only for the slots a marker reads.
Three sections:

1. Model FLOPs per image, counted from the released configuration (matmuls, convolutions and attention products;
   norms and activations ignored), for each task kind at its default steps and CFG width.
2. CPU wall time on a mid-size random model in one process: both schemes sample the same latents from the same
   inputs (asserted equal up to float reordering), and the ratio is printed.
3. On a GPU (when CUDA is available): seconds per image and peak memory at 512 px for batch sizes 1 and 8, original
   scheme vs pipeline, with and without encoder offload, on the full-size architecture with random bf16 weights.
   Without a GPU: the same full-size architecture on CPU (about 16 GiB of RAM), timed over a few solver calls and
   projected to the task's step count, with the peak tensor memory each scheme would need on a GPU, VAE decode
   included (``tensor_memory.LiveTensorBytes``).

Usage: ``python benchmarks/mige_generation.py [--steps 6] [--repeats 2] [--skip-gpu] [--full-size-batches 1 8]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from diffusers.utils import logging as diffusers_logging
from tensor_memory import LiveTensorBytes, weight_bytes
from torch.utils.flop_counter import FlopCounterMode

from reference_model import (
    MIGE_TRANSFORMER_SIZES,
    TASK_SAMPLING_DEFAULTS,
    MIGEMultimodalEncoder,
    MIGETransformer2DModel,
    SamplingSettings,
    sample_mige_latents,
)
from reference_model.pipeline_mige import VAE_LATENT_SCALE, temporarily_on
from reference_model.scheduling_mige import DPMSolverPlusPlus2M, GuidedNoisePredictor

# --------------------------------------------------------------------------------------------------------------------
#                                           1. FLOPs counted from the configs
# --------------------------------------------------------------------------------------------------------------------


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    """FLOPs of a dense layer over ``tokens`` rows (one multiply-add = 2 FLOPs)."""
    return 2 * tokens * fan_in * fan_out


def attention(queries: int, keys: int, width: int) -> int:
    """FLOPs of ``softmax(QKᵀ)V`` summed over heads: two ``queries × keys × width`` products."""
    return 2 * 2 * queries * keys * width


def vision_flops(config: dict) -> int:
    """EVA ViT on one image (patch conv + blocks)."""
    width, patches = config["vision_hidden_size"], (config["vision_image_size"] // config["vision_patch_size"]) ** 2
    tokens = patches + 1
    block = (
        linear(tokens, width, 3 * width)
        + attention(tokens, tokens, width)
        + linear(tokens, width, width)
        + 2 * linear(tokens, width, config["vision_intermediate_size"])
    )
    return linear(patches, 3 * config["vision_patch_size"] ** 2, width) + config["vision_num_layers"] * block


def qformer_flops(config: dict) -> int:
    """Q-Former query path on one image: self-attention every layer, cross-attention every n-th, query FFN."""
    width, queries, inner = (
        config["qformer_hidden_size"],
        config["num_query_tokens"],
        config["qformer_intermediate_size"],
    )
    image_tokens = (config["vision_image_size"] // config["vision_patch_size"]) ** 2 + 1
    self_attention = 4 * linear(queries, width, width) + attention(queries, queries, width)
    cross_attention = (
        2 * linear(queries, width, width)
        + 2 * linear(image_tokens, config["vision_hidden_size"], width)
        + attention(queries, image_tokens, width)
    )
    feed_forward = 2 * linear(queries, width, inner)
    layers = config["qformer_num_layers"]
    cross_layers = math.ceil(layers / config["qformer_cross_attention_frequency"])
    return layers * (self_attention + feed_forward) + cross_layers * cross_attention


def ffm_flops(config: dict, reference_tokens: int) -> int:
    """FFM + ``t5_proj`` on one image (queries attend to the image's ``reference_tokens`` VAE patch tokens)."""
    width, queries, token_dim = config["qformer_hidden_size"], config["num_query_tokens"], config["reference_token_dim"]
    key_value_mlps = 2 * (linear(reference_tokens, token_dim, width) + linear(reference_tokens, width, width))
    attention_block = (
        linear(queries, width, width)  # q_proj
        + linear(queries, width, width)  # in-proj q
        + 2 * linear(reference_tokens, width, width)  # in-proj k, v
        + attention(queries, reference_tokens, width)
        + 2 * linear(queries, width, width)  # out_proj, mlp
    )
    return key_value_mlps + attention_block + linear(queries, width, config["t5_d_model"])


def t5_flops(config: dict) -> int:
    """T5 encoder on the padded ``max_length`` sequence of one prompt."""
    tokens, width, inner = config["max_length"], config["t5_d_model"], config["t5_num_heads"] * config["t5_d_kv"]
    block = (
        3 * linear(tokens, width, inner)
        + attention(tokens, tokens, inner)
        + linear(tokens, inner, width)
        + 3 * linear(tokens, width, config["t5_d_ff"])  # gated FFN: wi_0, wi_1, wo
    )
    return config["t5_num_layers"] * block


def dit_row_flops(config: dict, caption_tokens: int) -> int:
    """One DiT forward of one CFG row (patch embed, caption MLP, blocks, final layer)."""
    width, patch = config["hidden_size"], config["patch_size"]
    tokens = (config["input_size"] // patch) ** 2
    inner = int(width * config["mlp_ratio"])
    block = (
        linear(tokens, width, 3 * width)
        + attention(tokens, tokens, width)
        + linear(tokens, width, width)
        + linear(tokens, width, width)  # cross-attention q
        + linear(caption_tokens, width, 2 * width)
        + attention(tokens, caption_tokens, width)
        + linear(tokens, width, width)
        + 2 * linear(tokens, width, inner)
    )
    embed = linear(tokens, 2 * config["in_channels"] * patch**2, width)
    caption = linear(caption_tokens, config["caption_channels"], width) + linear(caption_tokens, width, width)
    final = linear(tokens, width, patch**2 * 2 * config["in_channels"])
    return embed + caption + config["depth"] * block + final


def caption_keys_values_flops(config: dict, caption_tokens: int) -> int:
    """The part of :func:`dit_row_flops` that depends on the caption alone (caption MLP, every block's K/V)."""
    width = config["hidden_size"]
    caption = linear(caption_tokens, config["caption_channels"], width) + linear(caption_tokens, width, width)
    return caption + config["depth"] * linear(caption_tokens, width, 2 * width)


def conditioning_flops(encoder: dict, transformer: dict, encoded_slots: int) -> int:
    """Multimodal conditioning of one prompt with ``encoded_slots`` reference slots through the image branch."""
    reference_tokens = (transformer["input_size"] // transformer["patch_size"]) ** 2
    per_slot = vision_flops(encoder) + qformer_flops(encoder) + ffm_flops(encoder, reference_tokens)
    patch_inputs = 2 * transformer["in_channels"] * transformer["patch_size"] ** 2
    reference_embed = linear(reference_tokens, patch_inputs, transformer["hidden_size"])  # x_embedder of the ref latent
    return encoded_slots * (per_slot + reference_embed) + t5_flops(encoder)


@dataclass
class FlopsPerImage:
    conditioning_once: int
    dit_per_step: int
    original: int
    ours: int


def flops_per_image(encoder: dict, transformer: dict, settings: SamplingSettings, used_slots: int) -> FlopsPerImage:
    """Original scheme (conditioning on all slots, caption K/V included, at every step) vs ours (once, used slots).

    ``conditioning_once`` and ``dit_per_step`` are ours: the captions' keys and values belong to the former.
    """
    rows = 2 if settings.guidance_mode == "subject" else 3
    dit_step = rows * dit_row_flops(transformer, encoder["max_length"])
    caption_keys_values = rows * caption_keys_values_flops(transformer, encoder["max_length"])
    original_conditioning = conditioning_flops(encoder, transformer, encoder["max_references"])
    ours_conditioning = conditioning_flops(encoder, transformer, used_slots) + caption_keys_values
    ours_step = dit_step - caption_keys_values
    return FlopsPerImage(
        conditioning_once=ours_conditioning,
        dit_per_step=ours_step,
        original=settings.steps * (original_conditioning + dit_step),
        ours=ours_conditioning + settings.steps * ours_step,
    )


def full_size_configs() -> tuple[dict, dict]:
    """The released model's configs (constructor defaults) without building it."""
    with torch.device("meta"):
        encoder = MIGEMultimodalEncoder()
        transformer = MIGETransformer2DModel(**MIGE_TRANSFORMER_SIZES["MIGE_XL_2"])
    return dict(encoder.config), dict(transformer.config)


def report_flops() -> None:
    encoder, transformer = full_size_configs()
    print("## 1. Model FLOPs per 512-px image, released configuration (TFLOP)")
    print(
        f"{'task':14s} {'refs':>4s} {'steps':>5s} {'cond once':>9s} {'DiT/step':>9s} {'original':>9s} {'ours':>8s} "
        "ratio"
    )
    for kind, used in (("subject", 1), ("subject", 3), ("edit", 1), ("subject_edit", 2)):
        settings = TASK_SAMPLING_DEFAULTS[kind]
        flops = flops_per_image(encoder, transformer, settings, used)
        print(
            f"{kind:14s} {used:4d} {settings.steps:5d} {flops.conditioning_once / 1e12:9.2f} "
            f"{flops.dit_per_step / 1e12:9.2f} {flops.original / 1e12:9.1f} {flops.ours / 1e12:8.1f} "
            f"{flops.original / flops.ours:5.2f}x"
        )
    print("(original: ViT/Q-Former/FFM on 4 slots + T5 + caption K/V at every step; ours: used slots + T5 + caption "
          "K/V once)\n")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
#                                     2. CPU wall time on a mid-size random model
# --------------------------------------------------------------------------------------------------------------------

MID_ENCODER = {
    "vision_hidden_size": 256, "vision_num_layers": 6, "vision_num_heads": 4, "vision_intermediate_size": 1024,
    "num_query_tokens": 32, "qformer_hidden_size": 192, "qformer_num_layers": 4, "qformer_num_heads": 4,
    "qformer_intermediate_size": 768, "reference_token_dim": 256, "ffm_num_heads": 4, "t5_d_model": 512,
    "t5_d_kv": 64, "t5_num_heads": 8, "t5_d_ff": 1280, "t5_num_layers": 8, "t5_vocab_size": 2112,
}  # fmt: skip
MID_TRANSFORMER = {"input_size": 32, "hidden_size": 256, "depth": 6, "num_heads": 4, "caption_channels": 512}


@dataclass
class Conditions:
    """Everything both schemes start from (preprocessed references, tokenised prompts, source, noise)."""

    segment_ids: list[list[list[int]]]
    reference_pixels: torch.Tensor  # [B, R, 3, 224, 224]
    reference_latents: torch.Tensor  # [B, R, 4, h, w]
    source_latents: torch.Tensor  # [B, 4, h, w]
    noise: torch.Tensor  # [B, 4, h, w]


def random_conditions(
    encoder: MIGEMultimodalEncoder, transformer: MIGETransformer2DModel, batch: int, device: torch.device
) -> Conditions:
    """An edit-style batch: one real reference (the source) per prompt, one marker, random prompt tokens."""
    generator = torch.Generator().manual_seed(0)
    config, size = encoder.config, transformer.config.input_size
    pixels = torch.zeros(batch, config.max_references, 3, config.vision_image_size, config.vision_image_size)
    latents = torch.zeros(batch, config.max_references, 4, size, size)
    pixels[:, 0] = torch.randn(batch, 3, config.vision_image_size, config.vision_image_size, generator=generator)
    latents[:, 0] = torch.randn(batch, 4, size, size, generator=generator)
    segments = [[torch.randint(4, 2000, (40,), generator=generator).tolist(), []] for _ in range(batch)]
    return Conditions(
        segments,
        pixels.to(device),
        latents.to(device),
        (0.18215 * latents[:, 0]).to(device),
        torch.randn(batch, 4, size, size, generator=generator).to(device),
    )


class PerStepConditioning:
    """The original scheme: every solver call re-encodes the whole batch's conditioning, all slots included."""

    def __init__(
        self, encoder: MIGEMultimodalEncoder, transformer: MIGETransformer2DModel, conditions: Conditions, settings
    ) -> None:
        self.encoder, self.transformer, self.conditions, self.settings = encoder, transformer, conditions, settings

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, slots = self.conditions.reference_latents.shape[:2]
        tokens = self.transformer.embed_reference_latents(self.conditions.reference_latents.flatten(0, 1))
        conditioning = self.encoder(
            self.conditions.segment_ids,
            self.conditions.reference_pixels,
            tokens.view(batch, slots, *tokens.shape[1:]),
            skip_unused_references=False,
        )
        predictor = GuidedNoisePredictor(
            self.transformer,
            conditioning.hidden_states,
            conditioning.attention_mask,
            self.conditions.source_latents,
            guidance_mode=self.settings.guidance_mode,
            guidance_scale=self.settings.guidance_scale,
            source_guidance_scale=self.settings.source_guidance_scale,
        )
        return predictor(x, t)


@torch.no_grad()
def sample_original_scheme(encoder, transformer, conditions: Conditions, settings: SamplingSettings) -> torch.Tensor:
    predictor = PerStepConditioning(encoder, transformer, conditions, settings)
    return DPMSolverPlusPlus2M().sample(predictor, conditions.noise.float(), settings.steps)


@torch.no_grad()
def encode_once(encoder, transformer, conditions: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's conditioning: once per image (as ``MIGEPipeline.encode_conditioning``), used slots only."""
    states, masks = [], []
    for b, segments in enumerate(conditions.segment_ids):
        tokens = transformer.embed_reference_latents(conditions.reference_latents[b])[None]
        encoded = encoder([segments], conditions.reference_pixels[b : b + 1], tokens, skip_unused_references=True)
        states.append(encoded.hidden_states)
        masks.append(encoded.attention_mask)
    return torch.cat(states), torch.cat(masks)  # [B, L, D], [B, L]


@torch.no_grad()
def sample_ours(encoder, transformer, conditions: Conditions, settings: SamplingSettings) -> torch.Tensor:
    states, masks = encode_once(encoder, transformer, conditions)
    return sample_mige_latents(
        transformer, states, masks, conditions.source_latents, conditions.noise, settings
    ).latents


def best_time(function: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` runs (after the first, a warm-up) and the last output."""
    output = function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        output = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), output


def measured_flops(function: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def report_cpu(steps: int, repeats: int) -> None:
    torch.manual_seed(0)
    encoder = MIGEMultimodalEncoder(**MID_ENCODER).eval().requires_grad_(False)
    transformer = MIGETransformer2DModel(**MID_TRANSFORMER, model_max_length=encoder.config.max_length)
    transformer.eval().requires_grad_(False)
    with torch.no_grad():
        for parameter in encoder.parameters():  # library inits zero some blocks; make every branch contribute
            if parameter.dim() > 1:
                parameter.normal_(0, 0.02)
    device = torch.device("cpu")
    conditions = random_conditions(encoder, transformer, batch=1, device=device)
    settings = SamplingSettings(guidance_mode="edit", steps=steps, guidance_scale=5.0, source_guidance_scale=1.0)

    original_seconds, original = best_time(lambda: sample_original_scheme(encoder, transformer, conditions, settings),
                                           repeats, device)  # fmt: skip
    ours_seconds, ours = best_time(lambda: sample_ours(encoder, transformer, conditions, settings), repeats, device)
    difference = (ours - original).abs().max().item()
    tolerance = 2e-5 * max(1.0, original.abs().max().item())
    assert difference <= tolerance, f"outputs differ by {difference:.3g} (> {tolerance:.3g})"

    counted = flops_per_image(dict(encoder.config), dict(transformer.config), settings, used_slots=1)
    measured = measured_flops(lambda: sample_original_scheme(encoder, transformer, conditions, settings))
    # FlopCounterMode has no formula for the CPU flash-attention kernel that SDPA picks, so the DiT's attention
    # products are missing from its total; add them back to compare like with like.
    config = transformer.config
    tokens = (config.input_size // config.patch_size) ** 2
    dit_attention = attention(tokens, tokens, config.hidden_size) + attention(tokens, encoder.config.max_length,
                                                                               config.hidden_size)  # fmt: skip
    uncounted = settings.steps * 3 * config.depth * dit_attention
    print(f"## 2. CPU wall time, mid-size random model (edit, 1 reference, {steps} steps, bs 1, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip
    print(f"original scheme: {original_seconds:7.2f} s   ours: {ours_seconds:7.2f} s   "
          f"speed-up {original_seconds / ours_seconds:.2f}x")  # fmt: skip
    print(f"outputs: max |ours - original| = {difference:.3g} (max |latent| {original.abs().max():.3g}; "
          f"tolerance {tolerance:.3g})")  # fmt: skip
    print(f"FLOPs/image: counted original {counted.original / 1e9:.1f} G vs torch FlopCounter "
          f"{measured / 1e9:.1f} G + {uncounted / 1e9:.1f} G of DiT SDPA it cannot see "
          f"= {(measured + uncounted) / 1e9:.1f} G; "
          f"counted ours {counted.ours / 1e9:.1f} G -> {counted.original / counted.ours:.2f}x")  # fmt: skip

    # In bf16 (section 3's regime) the schemes' different batch shapes (4 slots at once vs the used one) round
    # differently; this is the scale of that difference next to bf16's own error against fp32.
    encoder, transformer = encoder.to(torch.bfloat16), transformer.to(torch.bfloat16)
    original_bf16 = sample_original_scheme(encoder, transformer, conditions, settings)
    ours_bf16 = sample_ours(encoder, transformer, conditions, settings)
    differences = {
        "original - ours": original_bf16 - ours_bf16,
        "ours - fp32": ours_bf16 - ours,
        "original - fp32": original_bf16 - original,
    }
    print("bf16, max |difference| / max |latent|: "
          + ", ".join(f"{name} {(d.abs().max() / ours.abs().max()).item():.2g}" for name, d in differences.items())
          + "\n")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
#                                     3. GPU: full-size architecture, random weights
# --------------------------------------------------------------------------------------------------------------------


def full_size_random_models(device: torch.device) -> tuple[MIGEMultimodalEncoder, MIGETransformer2DModel]:
    """The released architecture with random bf16 weights (no checkpoint needed for timing)."""
    with torch.device("meta"):
        encoder = MIGEMultimodalEncoder()
        transformer = MIGETransformer2DModel(**MIGE_TRANSFORMER_SIZES["MIGE_XL_2"])
    models = []
    for model in (encoder, transformer):
        model = model.to(torch.bfloat16).to_empty(device=device).eval().requires_grad_(False)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.normal_(0, 0.02)
        models.append(model)
    return models[0], models[1]


def report_gpu(steps: int, batch_sizes: Sequence[int]) -> None:
    device = torch.device("cuda")
    encoder, transformer = full_size_random_models(device)
    settings = SamplingSettings(guidance_mode="edit", steps=steps, guidance_scale=5.0, source_guidance_scale=1.0)
    print(f"## 3. GPU ({torch.cuda.get_device_name(device)}), full-size random bf16 weights, 512 px, edit, "
          f"{steps} steps (conditioning + sampling; VAE excluded)")  # fmt: skip
    print(f"{'bs':>3s} {'scheme':24s} {'s/image':>8s} {'peak GiB':>9s}")
    for batch in batch_sizes:
        conditions = random_conditions(encoder, transformer, batch, device)
        runs = {
            "original scheme": sample_original_scheme,
            "ours": sample_ours,
            "ours + encoder offload": _with_encoder_offload,
        }
        for name, sampler in runs.items():
            if sampler is _with_encoder_offload:
                encoder.to("cpu")
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            seconds, _ = best_time(
                lambda sampler=sampler, conditions=conditions: sampler(encoder, transformer, conditions, settings),
                repeats=1,
                device=device,
            )
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            print(f"{batch:3d} {name:24s} {seconds / batch:8.2f} {peak:9.1f}")
            encoder.to(device)


def _with_encoder_offload(encoder, transformer, conditions: Conditions, settings: SamplingSettings) -> torch.Tensor:
    """Ours with the encoder on CPU except while encoding (as ``MIGEPipeline.enable_encoder_offload``)."""
    with temporarily_on(encoder, transformer.device):
        states, masks = encode_once(encoder, transformer, conditions)
    with torch.no_grad():
        return sample_mige_latents(
            transformer, states, masks, conditions.source_latents, conditions.noise, settings
        ).latents


# --------------------------------------------------------------------------------------------------------------------
#                3. (no GPU) Full size on CPU: seconds per image and the device memory each scheme needs
# --------------------------------------------------------------------------------------------------------------------

# sd-vae-ft-ema's config.json (the release's VAE folder): SD's 4-level KL autoencoder.
SD_VAE_CONFIG = {
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4, "sample_size": 256,
}  # fmt: skip


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def report_full_size_on_cpu(steps: int, batch_sizes: Sequence[int]) -> None:
    """Section 3 without a GPU: time per image and the peak tensor memory of each scheme, full-size architecture.

    One solver call costs the same at every step, so the seconds per image at the task's default step count are
    projected from ``steps`` measured calls: original = N x (call with conditioning) + decode; ours = conditioning
    once + N x call + decode. The memory column with the encoder offloaded is composed from the measured phase
    peaks: the encoder's weights count while encoding, only the transformer's and VAE's afterwards.
    """
    with torch.device("meta"):
        footprint = sum(weight_bytes(model) for model in (MIGEMultimodalEncoder(), MIGETransformer2DModel(
            **MIGE_TRANSFORMER_SIZES["MIGE_XL_2"])))  # fp32 bytes  # fmt: skip
    needed = footprint // 2 + 4 * 2**30  # bf16 weights plus headroom for activations, the VAE and the process
    available = available_memory_bytes()
    if available is not None and available < needed:
        print(f"## 3. Full size on CPU: skipped ({available / 2**30:.1f} GiB of RAM available, "
              f"{needed / 2**30:.1f} GiB needed)")  # fmt: skip
        return
    task_steps = TASK_SAMPLING_DEFAULTS["edit"].steps
    settings = SamplingSettings(guidance_mode="edit", steps=steps, guidance_scale=5.0, source_guidance_scale=1.0)
    device = torch.device("cpu")
    encoder, transformer = full_size_random_models(device)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE_CONFIG).eval().requires_grad_(False)  # fp32, as the pipeline keeps it
    weights = {"encoder": weight_bytes(encoder), "transformer": weight_bytes(transformer), "vae": weight_bytes(vae)}
    print(f"## 3. Full size on CPU ({torch.get_num_threads()} threads), released architecture with random bf16 "
          f"weights (VAE fp32), 512 px, edit, {steps} solver calls measured, projected to {task_steps}")  # fmt: skip
    print("weights: " + ", ".join(f"{name} {size / 2**30:.2f} GiB" for name, size in weights.items()))
    print("peak = weights on the device + the most live tensor bytes at once (what max_memory_allocated counts)")
    print(f"{'bs':>3s} {'scheme':16s} {'s/call':>7s} {f's/image@{steps}':>11s} {f's/image@{task_steps}':>11s} "
          f"{'peak GiB':>9s} {'offloaded':>9s}")  # fmt: skip
    for batch in batch_sizes:
        conditions = random_conditions(encoder, transformer, batch, device)
        inputs = (conditions.reference_pixels, conditions.reference_latents, conditions.source_latents,
                  conditions.noise)  # fmt: skip

        ours = LiveTensorBytes(device.type, weights=(encoder, transformer, vae))
        ours.add(*inputs)
        with ours:
            ours.enter_phase("encode")
            start = time.perf_counter()
            states, masks = encode_once(encoder, transformer, conditions)
            encode_seconds = time.perf_counter() - start
            ours.enter_phase("sample")
            start = time.perf_counter()
            with torch.no_grad():
                latents = sample_mige_latents(
                    transformer, states, masks, conditions.source_latents, conditions.noise, settings
                ).latents
            call_seconds = (time.perf_counter() - start) / steps
            ours.enter_phase("decode")
            start = time.perf_counter()
            with torch.no_grad():
                vae.decode(latents / VAE_LATENT_SCALE)
            decode_seconds = time.perf_counter() - start

        original = LiveTensorBytes(device.type, weights=(encoder, transformer, vae))
        original.add(*inputs)
        with original:
            original.enter_phase("sample")
            start = time.perf_counter()
            original_latents = sample_original_scheme(encoder, transformer, conditions, settings)
            original_call_seconds = (time.perf_counter() - start) / steps
        # bf16 reorders sums differently per batch shape (the original encodes 4 slots of every image at once), so
        # the two agree to bf16 precision here; section 2 checks equality in fp32.
        difference = ((original_latents - latents).abs().max() / latents.abs().max()).item()

        resident = sum(weights.values())
        sampling_weights = weights["transformer"] + weights["vae"]
        # scheme: (seconds paid once per batch, seconds per solver call, peak with everything resident, peak with
        # the encoder offloaded — the original scripts keep it on the device)
        rows = {
            "original scheme": (
                decode_seconds,
                original_call_seconds,
                resident + max(original.peaks["sample"], ours.peaks["decode"]),
                None,
            ),
            "ours": (
                encode_seconds + decode_seconds,
                call_seconds,
                resident + max(ours.peaks.values()),
                max(
                    resident + ours.peaks["encode"], sampling_weights + max(ours.peaks["sample"], ours.peaks["decode"])
                ),
            ),
        }
        for name, (once, per_call, peak, offloaded) in rows.items():
            offloaded_text = "-" if offloaded is None else f"{offloaded / 2**30:.2f}"
            measured, projected = (once + steps * per_call) / batch, (once + task_steps * per_call) / batch
            print(f"{batch:3d} {name:16s} {per_call:7.2f} {measured:11.2f} {projected:11.2f} {peak / 2**30:9.2f} "
                  f"{offloaded_text:>9s}")  # fmt: skip
        speedup = (decode_seconds + task_steps * original_call_seconds) / (
            encode_seconds + decode_seconds + task_steps * call_seconds
        )
        print(f"    conditioning once {encode_seconds / batch:.2f} s/image, VAE decode {decode_seconds / batch:.2f} "
              f"s/image; speed-up at {task_steps} steps {speedup:.2f}x; latents max |ours - original| / max |ours| "
              f"= {difference:.2g}")  # fmt: skip
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="solver steps of the CPU comparison (6)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions after a warm-up (2)")
    parser.add_argument("--gpu-steps", type=int, default=20, help="solver steps of the GPU comparison (20)")
    parser.add_argument("--skip-gpu", action="store_true", help="skip section 3 even when CUDA is available")
    parser.add_argument("--full-size-steps", type=int, default=2,
                        help="without a GPU: solver calls measured on the full-size model on CPU (2)")  # fmt: skip
    parser.add_argument("--full-size-batches", type=int, nargs="+", default=[1], metavar="BS",
                        help="without a GPU: batch sizes of the full-size CPU measurement (1)")  # fmt: skip
    parser.add_argument("--skip-full-size", action="store_true",
                        help="without a GPU: skip the full-size CPU run (minutes, about 16 GiB of RAM)")  # fmt: skip
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()  # its warning on casting with to() is for fp32-kept modules; MIGE has none
    report_flops()
    report_cpu(args.steps, args.repeats)
    if torch.cuda.is_available() and not args.skip_gpu:
        report_gpu(args.gpu_steps, batch_sizes=(1, 8))
    elif args.skip_full_size:
        print("## 3. skipped (--skip-full-size)")
    else:
        report_full_size_on_cpu(args.full_size_steps, args.full_size_batches)


if __name__ == "__main__":
    main()
