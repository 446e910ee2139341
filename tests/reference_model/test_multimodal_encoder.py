"""Reference MIGE multimodal encoder: parity with the original code's golden tensors, plus self-contained checks.

Golden tests build the encoder from the fixture folder's own ``config.json``, load its original-key state dict, and
walk every ``case_*`` (both CFG-state prefixes, the batch-2 case) and every ``context_emb_cases`` prompt; they skip
without ``../shared``. Self-contained tests use the ``tiny`` size with seeded random weights.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mige_golden import assert_golden_close
from mige_tiny import randomize_

from reference_model.multimodal_encoder import (
    MULTIMODAL_ENCODER_SIZES,
    MIGEMultimodalEncoder,
    convert_original_encoder_state_dict,
    is_original_encoder_key,
    map_original_encoder_key,
)
from reference_model.text_processing import SegmentTokenizer

MANIFEST = Path(__file__).resolve().parents[3] / "shared" / "docs" / "mige_state_dict_manifest.tsv"


# ------------------------------------------------------------------------------------------------ golden helpers


def _golden_encoder_kwargs(config: dict) -> dict:
    """Constructor kwargs from the fixture's ``config.json`` (the original's constructor arguments)."""
    eva = {**config["eva_vit_kept"], **config["eva_vit_overrides"]}
    return MIGEMultimodalEncoder.config_from_original(
        config["t5_config"],
        config["qformer_bert_config"],
        vision_hidden_size=eva["embed_dim"],
        vision_num_layers=eva["depth"],
        vision_num_heads=eva["num_heads"],
        vision_mlp_ratio=eva["mlp_ratio"],
        reference_token_dim=config["mige_kwargs"]["hidden_size"],
        ffm_num_heads=config["ffm"]["num_heads"],
        num_query_tokens=config["qformer_extra"]["query_length"],
        cross_attention_frequency=config["qformer_extra"]["cross_attention_freq"],
        max_length=config["mige_defaults_kept"]["model_max_length"],
    )


@pytest.fixture(scope="module")
def golden_state_dict(golden) -> dict[str, torch.Tensor]:
    return golden.state_dict()


@pytest.fixture(scope="module")
def golden_encoder(golden, golden_state_dict) -> MIGEMultimodalEncoder:
    encoder = MIGEMultimodalEncoder(**_golden_encoder_kwargs(golden.config)).eval()
    encoder.load_original_state_dict(golden_state_dict)
    return encoder


def _embed_reference_latents(latents: torch.Tensor, state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """The DiT's ``x_embedder`` on ``cat([latent, zeros])`` (owned by the DiT; recomputed so this test stands alone)."""
    weight, bias = state_dict["x_embedder.proj.weight"], state_dict["x_embedder.proj.bias"]
    tokens = F.conv2d(torch.cat([latents, torch.zeros_like(latents)], dim=1), weight, bias, stride=weight.shape[-1])
    return tokens.flatten(2).transpose(1, 2)  # [M, N, C]


@dataclass
class CaseInputs:
    pixels: torch.Tensor  # [B, R, 3, H, W], zero-padded
    reference_tokens: torch.Tensor  # [B, R, N, C]
    segment_ids: list[list[list[int]]]


def _single_case_inputs(golden, name: str, slots: int, state_dict) -> CaseInputs:
    case = golden.case(name)
    real_pixels, real_latents = case.tensors["ref_clip_real"], case.tensors["ref_vae_real"]
    padding = slots - real_pixels.shape[0]
    pixels = torch.cat([real_pixels, real_pixels.new_zeros(padding, *real_pixels.shape[1:])])
    latents = torch.cat([real_latents, real_latents.new_zeros(padding, *real_latents.shape[1:])])
    segments = [s["input_ids"] for s in case.meta["case"]["prompt_segments"]]
    return CaseInputs(pixels[None], _embed_reference_latents(latents, state_dict)[None], [segments])


def _case_inputs(golden, name: str, slots: int, state_dict) -> CaseInputs:
    """Model inputs of a case; a batch case concatenates its members' inputs in order (fixture README §3)."""
    members = golden.case(name).meta["case"].get("members")
    if not members:
        return _single_case_inputs(golden, name, slots, state_dict)
    parts = [_single_case_inputs(golden, f"case_{member}", slots, state_dict) for member in members]
    return CaseInputs(
        torch.cat([p.pixels for p in parts]),
        torch.cat([p.reference_tokens for p in parts]),
        [s for p in parts for s in p.segment_ids],
    )


def _golden_forwards(golden, state_dict):
    """Yield ``(label, tensors, prefix, inputs)`` for every case and every forward prefix it stores."""
    for name in golden.case_names():
        case = golden.case(name)
        prefixes = sorted({key.rsplit(".", 1)[0] for key in case.tensors if key.endswith(".qformer_out")})
        for prefix in prefixes:
            slots = case.tensors[f"{prefix}.t5_proj_out"].shape[1]
            yield f"{name}/{prefix}", case.tensors, prefix, _case_inputs(golden, name, slots, state_dict)


# ------------------------------------------------------------------------------------------------ golden parity


@torch.no_grad()
def test_vision_tower_matches_original(golden, golden_encoder, golden_state_dict) -> None:
    compared = set()
    for label, tensors, prefix, inputs in _golden_forwards(golden, golden_state_dict):
        pixels = inputs.pixels.flatten(0, 1)
        if f"{prefix}.vit_out" in tensors:
            vit_out = golden_encoder.vision_encoder(pixels)
            assert_golden_close(vit_out, tensors[f"{prefix}.vit_out"], f"{label} vit_out")
            compared.add("vit_out")
        if f"{prefix}.ln_vision_out" in tensors:
            image_embeds = golden_encoder.embed_images(pixels)
            assert_golden_close(image_embeds, tensors[f"{prefix}.ln_vision_out"], f"{label} ln_vision_out")
            compared.add("ln_vision_out")
    assert compared == {"vit_out", "ln_vision_out"}


@torch.no_grad()
def test_qformer_ffm_and_t5_proj_match_original(golden, golden_encoder, golden_state_dict) -> None:
    compared = 0
    for label, tensors, prefix, inputs in _golden_forwards(golden, golden_state_dict):
        tokens = inputs.reference_tokens.flatten(0, 1)
        if f"{prefix}.vae_features_real" in tensors:
            real = tensors[f"{prefix}.vae_features_real"]
            assert_golden_close(tokens[: real.shape[0]], real, f"{label} vae_features_real")
        queries = golden_encoder.query_images(golden_encoder.embed_images(inputs.pixels.flatten(0, 1)))
        assert_golden_close(queries, tensors[f"{prefix}.qformer_out"], f"{label} qformer_out")
        fused = golden_encoder.ffm(queries, tokens)
        assert_golden_close(fused, tensors[f"{prefix}.ffm_out"], f"{label} ffm_out")
        projected = golden_encoder.t5_proj(fused).view(tensors[f"{prefix}.t5_proj_out"].shape)
        assert_golden_close(projected, tensors[f"{prefix}.t5_proj_out"], f"{label} t5_proj_out")
        compared += 1
    assert compared >= len(golden.case_names())


@torch.no_grad()
def test_prompt_splice_is_exact_and_t5_matches_original(golden, golden_encoder, golden_state_dict) -> None:
    for label, tensors, prefix, inputs in _golden_forwards(golden, golden_state_dict):
        embeds, mask = golden_encoder.splice_prompt(inputs.segment_ids, tensors[f"{prefix}.t5_proj_out"])
        assert torch.equal(embeds, tensors[f"{prefix}.context_embs"]), f"{label} context_embs"
        assert torch.equal(mask, tensors[f"{prefix}.context_mask"]), f"{label} context_mask"
        hidden = golden_encoder.encode_text(tensors[f"{prefix}.context_embs"], tensors[f"{prefix}.context_mask"])
        assert_golden_close(hidden, tensors[f"{prefix}.t5_out"], f"{label} t5_out")


@pytest.mark.parametrize("skip_unused_references", [False, True])
@torch.no_grad()
def test_end_to_end_conditioning_matches_original(
    skip_unused_references: bool, golden, golden_encoder, golden_state_dict
) -> None:
    for label, tensors, prefix, inputs in _golden_forwards(golden, golden_state_dict):
        hidden, mask = golden_encoder(
            inputs.segment_ids, inputs.pixels, inputs.reference_tokens, skip_unused_references
        )
        assert torch.equal(mask, tensors[f"{prefix}.context_mask"]), f"{label} context_mask"
        assert_golden_close(hidden, tensors[f"{prefix}.t5_out"], f"{label} t5_out")


@torch.no_grad()
def test_context_embedding_edge_cases_match_original(golden, golden_encoder) -> None:
    cases = golden.json("context_emb_cases.json")
    tensors = golden.case("context_emb_cases").tensors
    tokenizer = SegmentTokenizer.from_pretrained(golden.root / golden.config["mige_kwargs"]["t5_model"])
    max_length = golden.config["mige_defaults_kept"]["max_len"]
    for prompt in cases["prompts"]:
        name = prompt["name"]
        segment_ids = tokenizer(prompt["prompt"])
        assert segment_ids == [s["input_ids"] for s in prompt["segments"]], name
        embeds, mask = golden_encoder.splice_prompt([segment_ids], tensors["ctx.img_lists"])
        assert torch.equal(embeds, tensors[f"ctx.{name}.embs"]), name
        assert torch.equal(mask, tensors[f"ctx.{name}.mask"]), name
        assert int(mask.sum()) == min(prompt["real_len"], max_length), name


def test_every_original_encoder_key_maps_onto_the_module(golden_state_dict, golden_encoder) -> None:
    encoder_keys = {k for k in golden_state_dict if is_original_encoder_key(k)}
    converted = convert_original_encoder_state_dict(golden_state_dict, golden_encoder)
    assert set(converted) == set(golden_encoder.state_dict())
    # Only the unused Q-Former position ids and the tied alias of the T5 embedding are dropped.
    assert encoder_keys - {k for k in encoder_keys if map_original_encoder_key(k)} == {
        "Qformer.bert.embeddings.position_ids",
        "t5_model.shared.weight",
    }


def test_full_size_key_set_and_shapes_match_the_release_manifest() -> None:
    if not MANIFEST.is_file():
        pytest.skip(f"state-dict manifest not found at {MANIFEST} (provide ../shared)")
    original = {}
    for line in MANIFEST.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")[:3]
        original[key] = torch.empty(ast.literal_eval(shape), dtype=getattr(torch, dtype), device="meta")
    with torch.device("meta"):
        module = MIGEMultimodalEncoder(**MULTIMODAL_ENCODER_SIZES["MIGE_XL_2"])
    converted = convert_original_encoder_state_dict(original, module)  # raises on any key or shape problem
    expected = {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}
    assert {key: tuple(tensor.shape) for key, tensor in converted.items()} == expected
    assert len(converted) == sum(map(is_original_encoder_key, original)) - 2


# ------------------------------------------------------------------------------------------------ tiny model


def _seeded_tiny_encoder(seed: int = 0) -> MIGEMultimodalEncoder:
    """The ``tiny`` size with weights drawn here (independent of library init code): N(0, 1/fan_in) matrices,
    N(0, 0.1) vectors, norm weights around 1."""
    encoder = MIGEMultimodalEncoder(**MULTIMODAL_ENCODER_SIZES["tiny"]).eval()
    randomize_(encoder, seed)
    return encoder


def _tiny_inputs(encoder: MIGEMultimodalEncoder, real_references: list[int], seed: int = 1):
    """Pixels and reference tokens for a batch, zero-padded after ``real_references[b]`` slots."""
    config = encoder.config
    generator = torch.Generator().manual_seed(seed)
    batch, slots, size = len(real_references), config.max_references, config.vision_image_size
    pixels = torch.randn(batch, slots, 3, size, size, generator=generator)
    tokens = torch.randn(batch, slots, 16, config.reference_token_dim, generator=generator)
    for b, count in enumerate(real_references):
        pixels[b, count:] = 0
        tokens[b, count:] = tokens[b, count:].mean()  # padded slots: bias-only tokens in the real pipeline
    return pixels, tokens


@pytest.fixture(scope="module")
def tiny_encoder() -> MIGEMultimodalEncoder:
    return _seeded_tiny_encoder()


@torch.no_grad()
def test_forward_shapes_and_mask(tiny_encoder) -> None:
    config = tiny_encoder.config
    pixels, tokens = _tiny_inputs(tiny_encoder, [1, 2])
    segments = [[[5, 6, 7], [8]], [[9], [10, 11], []]]
    hidden, mask = tiny_encoder(segments, pixels, tokens)
    assert hidden.shape == (2, config.max_length, config.t5_d_model)
    assert mask.dtype == torch.int64
    lengths = [3 + config.num_query_tokens + 1 + 1, 1 + 2 + 2 * config.num_query_tokens + 1]
    assert mask.sum(dim=1).tolist() == lengths
    assert torch.isfinite(hidden).all()


@torch.no_grad()
def test_splice_follows_the_original_rules(tiny_encoder) -> None:
    config = tiny_encoder.config
    embed = tiny_encoder.text_encoder.embed_tokens.weight
    slots, queries = config.max_references, config.num_query_tokens
    blocks = torch.randn(1, slots, queries, config.t5_d_model)
    # One more marker than slots: the segment after the last slot's marker is dropped; EOS only at the very end.
    segments = [[[10 + i] for i in range(slots + 1)] + [[99]]]
    embeds, mask = tiny_encoder.splice_prompt(segments, blocks)
    expected = [piece for i in range(slots) for piece in (embed[[10 + i]], blocks[0, i])]
    expected = torch.cat([*expected, embed[[99, config.eos_token_id]]])
    length = expected.shape[0]
    assert torch.equal(embeds[0, :length], expected)
    assert torch.equal(embeds[0, length:], embed[config.pad_token_id].expand(config.max_length - length, -1))
    assert mask[0].tolist() == [1] * length + [0] * (config.max_length - length)
    # Too long: cut at max_length, EOS lost, mask all ones.
    long_segments = [[list(range(3, 3 + config.max_length)), [4]]]
    embeds, mask = tiny_encoder.splice_prompt(long_segments, blocks)
    assert torch.equal(embeds[0], embed[3 : 3 + config.max_length])
    assert bool(mask.all())


def test_skip_unused_references_is_output_identical_and_skips_work(tiny_encoder) -> None:
    # Sample 0: 3 markers, 1 real image (padded slots 1 and 2 ARE spliced); sample 1: no marker, 2 real images;
    # sample 2: 6 markers, all 4 slots real.
    segments = [[[4], [5], [6], [7]], [[8, 9]], [[i] for i in range(10, 17)]]
    pixels, tokens = _tiny_inputs(tiny_encoder, [1, 2, 4])
    encoded_images = []
    hook = tiny_encoder.vision_encoder.register_forward_hook(lambda m, args, out: encoded_images.append(len(out)))
    try:
        with torch.no_grad():
            full = tiny_encoder(segments, pixels, tokens, skip_unused_references=False)
            skipped = tiny_encoder(segments, pixels, tokens, skip_unused_references=True)
    finally:
        hook.remove()
    assert encoded_images == [3 * tiny_encoder.config.max_references, 3 + 0 + 4]
    assert torch.equal(full.attention_mask, skipped.attention_mask)
    torch.testing.assert_close(skipped.hidden_states, full.hidden_states, rtol=0, atol=1e-6)


@torch.no_grad()
def test_all_zero_reference_batch_splices_zero_blocks_without_encoding(tiny_encoder) -> None:
    config = tiny_encoder.config
    pixels, tokens = _tiny_inputs(tiny_encoder, [0])
    segments = [[[4], [5]]]
    calls = []
    hook = tiny_encoder.vision_encoder.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        hidden, _ = tiny_encoder(segments, pixels, tokens, skip_unused_references=False)
    finally:
        hook.remove()
    zero_blocks = torch.zeros(1, config.max_references, config.num_query_tokens, config.t5_d_model)
    expected = tiny_encoder.encode_text(*tiny_encoder.splice_prompt(segments, zero_blocks))
    assert calls == []
    assert torch.equal(hidden, expected)


@torch.no_grad()
def test_save_pretrained_round_trip(tiny_encoder, tmp_path: Path) -> None:
    pixels, tokens = _tiny_inputs(tiny_encoder, [2])
    segments = [[[4, 5], [6], [7]]]
    tiny_encoder.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = MIGEMultimodalEncoder.from_pretrained(tmp_path)
    public_config = {key: value for key, value in tiny_encoder.config.items() if not key.startswith("_")}
    assert {key: reloaded.config[key] for key in public_config} == public_config
    assert torch.equal(reloaded(segments, pixels, tokens).hidden_states, tiny_encoder(segments, pixels, tokens)[0])


@torch.no_grad()
def test_output_is_deterministic_and_independent_of_train_mode(tiny_encoder) -> None:
    pixels, tokens = _tiny_inputs(tiny_encoder, [2, 1])
    segments = [[[4], [5], [6]], [[7, 8], [9]]]
    first = tiny_encoder(segments, pixels, tokens).hidden_states
    tiny_encoder.train()
    try:
        second = tiny_encoder.encode(segments, pixels, tokens).hidden_states
    finally:
        tiny_encoder.eval()
    assert torch.equal(first, second)


@torch.no_grad()
def test_pinned_output_slice(tiny_encoder) -> None:
    pixels, tokens = _tiny_inputs(tiny_encoder, [1])
    hidden, _ = tiny_encoder([[[4, 5], [6, 7]]], pixels, tokens)
    expected = torch.tensor(PINNED_SLICE)
    torch.testing.assert_close(hidden[0, :3, :3], expected, rtol=0, atol=1e-4)


# Positions 0-1: text tokens, 2: first query of the image block (depends on ViT, Q-Former, FFM, t5_proj and T5).
PINNED_SLICE = [
    [1.183253, -1.029812, 1.163934],
    [0.453479, -0.145447, 0.429827],
    [-0.484369, -0.009175, 0.552635],
]


@torch.no_grad()
def test_bfloat16_on_cpu_runs_and_stays_close_to_float32(tiny_encoder) -> None:
    pixels, tokens = _tiny_inputs(tiny_encoder, [2])
    segments = [[[4], [5], [6]]]
    reference = tiny_encoder(segments, pixels, tokens).hidden_states
    half = _seeded_tiny_encoder().to(torch.bfloat16)
    hidden = half(segments, pixels, tokens).hidden_states
    assert hidden.dtype == torch.bfloat16
    cosine = F.cosine_similarity(hidden.float().flatten(), reference.flatten(), dim=0)
    assert cosine > 0.99


# ------------------------------------------------------------------------------------------------ key mapping errors


def test_unmapped_encoder_key_fails_loudly(golden_encoder, golden_state_dict) -> None:
    state = {**golden_state_dict, "FFM.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unmapped original multimodal-encoder key: 'FFM\.extra\.weight'"):
        convert_original_encoder_state_dict(state, golden_encoder)


def test_missing_or_misshapen_keys_fail_loudly(golden_encoder, golden_state_dict) -> None:
    state = {key: value for key, value in golden_state_dict.items() if key != "FFM.mlp.bias"}
    state["t5_proj.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="2 multimodal-encoder key problem") as error:
        convert_original_encoder_state_dict(state, golden_encoder)
    assert "'ffm.mlp.bias'" in str(error.value)
    assert "shape of 't5_proj.bias'" in str(error.value)


def test_untied_or_absent_t5_embedding_fails_loudly(tiny_encoder) -> None:
    untied = {"t5_model.shared.weight": torch.zeros(2, 2), "t5_model.encoder.embed_tokens.weight": torch.ones(2, 2)}
    with pytest.raises(ValueError, match="must be tied"):
        convert_original_encoder_state_dict(untied, tiny_encoder)
    with pytest.raises(ValueError, match="must both be present"):
        tiny_encoder.load_original_state_dict({})


def test_cuda_autocast_leaves_cat_to_native_promotion_as_the_vit_regime_assumes() -> None:
    """Spec §1.1: under CUDA fp16 autocast, ``cat(bf16 CLS, fp16 patches)`` promotes to fp32, which makes the ViT's
    residual stream fp32. That holds because autocast has no CUDA kernel for ``cat`` (CPU autocast has one, and
    refuses the bf16/fp16 mix), so the bf16 regime cannot be emulated on CPU; a torch that changes this breaks it."""
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("aten::cat", "AutocastCUDA")
    assert torch.cat((torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.float16))).dtype == torch.float32
