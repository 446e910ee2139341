"""MIGE DiT: self-contained behaviour of a tiny random model, and parity with the original-code golden fixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mige_golden import assert_golden_close, golden_dir

from reference_model.scheduling_mige import GuidedNoisePredictor
from reference_model.transformer_mige import (
    MIGE_TRANSFORMER_SIZES,
    MIGETransformer2DModel,
    convert_original_transformer_state_dict,
    is_original_transformer_key,
    map_original_transformer_key,
    sincos_2d_position_embedding,
    transformer_config_from_original,
)

TINY_CONFIG = {
    "input_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 32,
    "depth": 2,
    "num_heads": 4,
    "caption_channels": 16,
    "model_max_length": 12,
}
MANIFEST = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "mige_state_dict_manifest.tsv"


def tiny_model(seed: int = 0, **overrides: object) -> MIGETransformer2DModel:
    torch.manual_seed(seed)
    return MIGETransformer2DModel(**{**TINY_CONFIG, **overrides}).eval()


def tiny_inputs(batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Inputs for ``TINY_CONFIG``: row b has ``5 + b`` real caption tokens."""
    generator = torch.Generator().manual_seed(seed)
    size, length = TINY_CONFIG["input_size"], TINY_CONFIG["model_max_length"]
    mask = (torch.arange(length)[None] < (5 + torch.arange(batch))[:, None]).long()
    return {
        "hidden_states": torch.randn(batch, 4, size, size, generator=generator),
        "timestep": torch.tensor([999.0, 123.5, 500.0, 1.0])[:batch],
        "encoder_hidden_states": torch.randn(batch, length, TINY_CONFIG["caption_channels"], generator=generator),
        "encoder_attention_mask": mask,
        "source_latents": torch.randn(batch, 4, size, size, generator=generator),
    }


def run(model: MIGETransformer2DModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


# Original key for each key family of this model (the inverse of the documented mapping), to build
# original-format state dicts without the fixtures.
_TO_ORIGINAL = (
    ("t_embedder.linear_1.", "t_embedder.mlp.0."),
    ("t_embedder.linear_2.", "t_embedder.mlp.2."),
    ("t_block.", "t_block.1."),
    ("y_embedder.linear_1.", "y_embedder.y_proj.fc1."),
    ("y_embedder.linear_2.", "y_embedder.y_proj.fc2."),
    ("null_caption", "y_embedder.y_embedding"),
    (".self_attn.", ".attn."),
)


def to_original_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    original = {}
    for key, tensor in state_dict.items():
        for ours, theirs in _TO_ORIGINAL:
            key = key.replace(ours, theirs)
        original[key] = tensor
    return original


# ---------------------------------------------------------------------------------------------------------------
# Self-contained behaviour
# ---------------------------------------------------------------------------------------------------------------


def test_forward_returns_noise_and_variance_channels_at_latent_resolution() -> None:
    output = run(tiny_model(), tiny_inputs(batch=3))
    assert output.shape == (3, 8, 8, 8)
    assert output.dtype == torch.float32
    assert torch.isfinite(output).all()


def test_output_without_learned_sigma_has_latent_channels_only() -> None:
    assert run(tiny_model(pred_sigma=False), tiny_inputs()).shape == (2, 4, 8, 8)


# Output channel 0, top-left 3x3 of row 1 for tiny_model(seed=0) on tiny_inputs(seed=1) (torch 2.14, CPU, fp32).
PINNED_SLICE = [[-0.02007, 0.01807, -0.0725], [-1.49342, 0.46693, -1.07805], [0.46121, 0.03114, 0.12598]]


def test_pinned_output_slice_of_seeded_tiny_model() -> None:
    output = run(tiny_model(seed=0), tiny_inputs(seed=1))
    expected = torch.tensor(PINNED_SLICE)
    torch.testing.assert_close(output[1, 0, :3, :3], expected, rtol=0, atol=1e-4)


def test_forward_is_deterministic_and_batch_independent() -> None:
    model, inputs = tiny_model(), tiny_inputs(batch=3)
    batched = run(model, inputs)
    torch.testing.assert_close(run(model, inputs), batched, rtol=0, atol=0)
    for row in range(3):
        single = run(model, {name: value[row : row + 1] for name, value in inputs.items()})
        torch.testing.assert_close(single, batched[row : row + 1], rtol=0, atol=1e-5)


def test_caption_keys_values_computed_once_give_the_same_output_as_the_caption() -> None:
    model, inputs = tiny_model(), tiny_inputs(batch=3)
    with torch.no_grad():
        cache = model.caption_keys_values(inputs["encoder_hidden_states"])
        cached = model(**{**inputs, "encoder_hidden_states": None}, caption_keys_values=cache).sample
    assert len(cache) == TINY_CONFIG["depth"]
    heads = TINY_CONFIG["num_heads"]
    assert cache[0][0].shape == (3, heads, TINY_CONFIG["model_max_length"], TINY_CONFIG["hidden_size"] // heads)
    assert torch.equal(cached, run(model, inputs))
    with pytest.raises(ValueError, match="encoder_hidden_states or caption_keys_values"):
        model(**{**inputs, "encoder_hidden_states": None})


def test_the_guided_predictor_projects_the_captions_once_per_sampling_run() -> None:
    model, inputs = tiny_model(), tiny_inputs(batch=2)
    projections = []
    model.blocks[0].cross_attn.kv_linear.register_forward_hook(lambda *_: projections.append(1))
    predictor = GuidedNoisePredictor(
        model,
        inputs["encoder_hidden_states"],
        inputs["encoder_attention_mask"],
        inputs["source_latents"],
        guidance_mode="edit",
        guidance_scale=5.0,
    )
    with torch.no_grad():
        for t in (0.9, 0.5, 0.1):
            predictor(inputs["hidden_states"], torch.full((2,), t))
    assert len(projections) == 1  # not once per call


def test_padded_caption_positions_do_not_change_the_output() -> None:
    model, inputs = tiny_model(), tiny_inputs()
    scrambled = dict(inputs)
    padding = inputs["encoder_attention_mask"] == 0
    scrambled["encoder_hidden_states"] = inputs["encoder_hidden_states"].masked_fill(padding[..., None], 1e3)
    torch.testing.assert_close(run(model, scrambled), run(model, inputs), rtol=0, atol=1e-6)
    # ...while a real caption token does matter.
    changed = dict(inputs)
    changed["encoder_hidden_states"] = inputs["encoder_hidden_states"].clone()
    changed["encoder_hidden_states"][:, 0] += 1.0
    assert (run(model, changed) - run(model, inputs)).abs().max() > 1e-3


def test_source_latent_changes_the_output() -> None:
    model, inputs = tiny_model(), tiny_inputs()
    zero_source = {**inputs, "source_latents": torch.zeros_like(inputs["source_latents"])}
    assert (run(model, zero_source) - run(model, inputs)).abs().max() > 1e-3


def test_reference_latents_are_embedded_without_positions_through_the_latent_channels() -> None:
    model = tiny_model()
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    tokens = model.embed_reference_latents(latents)
    weight, bias = model.x_embedder.proj.weight, model.x_embedder.proj.bias
    # The source channels (4..7) see zeros, so only the first four input channels of the kernel contribute.
    expected = F.conv2d(latents, weight[:, :4], bias, stride=2).flatten(2).transpose(1, 2)
    assert tokens.shape == (3, 16, 32)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-6)


def test_sincos_position_embedding_encodes_column_then_row() -> None:
    hidden, grid = 16, 4
    table = sincos_2d_position_embedding(hidden, grid, base_size=grid)
    omega = 1.0 / 10000 ** (torch.arange(hidden // 4, dtype=torch.float64) / (hidden // 4))
    token = 2 * grid + 3  # row 2, column 3
    expected_column = torch.cat([torch.sin(3 * omega), torch.cos(3 * omega)])
    expected_row = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega)])
    torch.testing.assert_close(table[token], torch.cat([expected_column, expected_row]).float())
    assert table.shape == (grid * grid, hidden)


def test_bf16_model_sees_bf16_rounded_timesteps_like_the_original() -> None:
    inputs = tiny_inputs(batch=1)
    model = tiny_model().to(torch.bfloat16)
    # 999 rounds to 1000 in bf16 (spec §3.5.4), so a bf16 model cannot tell them apart; an fp32 model can.
    at_999 = run(model, {**inputs, "timestep": torch.tensor([999.0])})
    at_1000 = run(model, {**inputs, "timestep": torch.tensor([1000.0])})
    assert at_999.dtype == torch.bfloat16
    torch.testing.assert_close(at_999, at_1000, rtol=0, atol=0)
    fp32_model = tiny_model()
    fp32_999 = run(fp32_model, {**inputs, "timestep": torch.tensor([999.0])})
    fp32_1000 = run(fp32_model, {**inputs, "timestep": torch.tensor([1000.0])})
    assert (fp32_999 - fp32_1000).abs().max() > 0


def test_save_and_load_round_trip_keeps_config_weights_and_buffers(tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.null_caption.mul_(3.0)  # must come back from the file, not from a fresh random init
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    restored = MIGETransformer2DModel.from_pretrained(tmp_path).eval()
    for name in ("input_size", "hidden_size", "depth", "num_heads", "caption_channels", "model_max_length"):
        assert restored.config[name] == model.config[name]
    torch.testing.assert_close(restored.null_caption, model.null_caption, rtol=0, atol=0)
    torch.testing.assert_close(restored.pos_embed, model.pos_embed, rtol=0, atol=0)
    inputs = tiny_inputs()
    torch.testing.assert_close(run(restored, inputs), run(model, inputs), rtol=0, atol=0)


def test_named_size_builds_the_full_model_on_meta_device() -> None:
    with torch.device("meta"):
        model = MIGETransformer2DModel(**MIGE_TRANSFORMER_SIZES["MIGE_XL_2"])
    assert model.pos_embed.shape == (1, 1024, 1152)
    assert model.null_caption.shape == (256, 4096)
    assert model.blocks[0].self_attn.qkv.weight.shape == (3456, 1152)
    assert model.final_layer.linear.weight.shape == (32, 1152)


# ---------------------------------------------------------------------------------------------------------------
# Original state-dict mapping
# ---------------------------------------------------------------------------------------------------------------


def test_original_state_dict_round_trips_through_the_key_mapping() -> None:
    model = tiny_model()
    original = to_original_keys(model.state_dict())
    original["visual_encoder.cls_token"] = torch.zeros(1)  # encoder keys are left to the encoder's mapping
    converted = convert_original_transformer_state_dict(original, model)
    assert converted.keys() == model.state_dict().keys()
    restored = tiny_model(seed=7)
    restored.load_state_dict(converted, strict=True)
    inputs = tiny_inputs()
    torch.testing.assert_close(run(restored, inputs), run(model, inputs), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("y_embedder.y_embedding"), "missing from the original state dict: 'null_caption'"),
        (lambda sd: sd.__setitem__("blocks.0.attn.q_norm.weight", torch.ones(8)), "unmapped original DiT key"),
        (lambda sd: sd.__setitem__("pos_embed", torch.zeros(1, 4, 32)), "shape of 'pos_embed'"),
        (lambda sd: sd.__setitem__("blocks.9.mlp.fc1.bias", torch.zeros(128)), "which the model does not have"),
    ],
    ids=["missing_null_caption", "unknown_key", "wrong_shape", "extra_block"],
)
def test_key_mapping_fails_loudly(edit, message: str) -> None:
    model = tiny_model()
    original = to_original_keys(model.state_dict())
    edit(original)
    with pytest.raises(ValueError, match=message):
        convert_original_transformer_state_dict(original, model)


def test_key_mapping_rejects_a_single_unknown_key() -> None:
    with pytest.raises(KeyError):
        map_original_transformer_key("blocks.0.attn.rel_pos_h")
    assert map_original_transformer_key("blocks.3.attn.qkv.weight") == "blocks.3.self_attn.qkv.weight"
    assert is_original_transformer_key("final_layer.linear.bias")
    assert not is_original_transformer_key("t5_proj.weight")


@pytest.mark.skipif(not MANIFEST.is_file(), reason=f"state-dict manifest not found at {MANIFEST}")
def test_full_size_mapping_covers_every_dit_key_of_the_release_manifest() -> None:
    shapes = {}
    for line in MANIFEST.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")[:2]
        shapes[name] = tuple(int(size) for size in shape.strip("()").split(",") if size.strip())
    original = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    with torch.device("meta"):
        model = MIGETransformer2DModel(**MIGE_TRANSFORMER_SIZES["MIGE_XL_2"])
    converted = convert_original_transformer_state_dict(original, model)
    dit_keys = [name for name in shapes if is_original_transformer_key(name)]
    assert len(converted) == len(dit_keys) == len(model.state_dict())
    assert sum(math.prod(shapes[name]) for name in dit_keys) == sum(t.numel() for t in model.state_dict().values())


# ---------------------------------------------------------------------------------------------------------------
# Parity with the original code (golden fixtures)
# ---------------------------------------------------------------------------------------------------------------


def golden_forward_runs() -> list:
    """(case, tensor prefix, forward-info key) for every DiT forward stored in the fixture folder."""
    runs = []
    for path in sorted(golden_dir().glob("case_*.json")):
        case = json.loads(path.read_text())["case"]
        for prefix, info_key in (("fwd", "forward"), ("fwd_subject_state", "forward_other_state")):
            if case.get(info_key):
                runs.append(pytest.param(path.stem, prefix, info_key, id=f"{path.stem}-{prefix}"))
    return runs or [
        pytest.param(None, None, None, marks=pytest.mark.skip(reason=f"no golden fixtures at {golden_dir()}"))
    ]


@pytest.fixture(scope="module")
def golden_transformer(golden) -> MIGETransformer2DModel:
    config = transformer_config_from_original({**golden.config["mige_defaults_kept"], **golden.config["mige_kwargs"]})
    model = MIGETransformer2DModel(**config).eval()
    model.load_state_dict(convert_original_transformer_state_dict(golden.state_dict(), model), strict=True)
    return model


def golden_source_latents(golden, case_name: str, case_meta: dict, tensors: dict) -> torch.Tensor:
    """The batch's source latents; a multi-sample case reuses the sources of its member cases, in order."""
    if "members" in case_meta["case"]:
        return torch.stack([golden.case(f"case_{member}").tensors["source"] for member in case_meta["case"]["members"]])
    return tensors["source"][None]


def test_pos_embed_matches_the_original_buffer_exactly(golden, golden_transformer) -> None:
    torch.testing.assert_close(golden_transformer.pos_embed, golden.state_dict()["pos_embed"], rtol=0, atol=0)


@pytest.mark.parametrize(("case_name", "prefix", "info_key"), golden_forward_runs())
def test_dit_forward_matches_golden(golden, golden_transformer, case_name, prefix, info_key) -> None:
    case = golden.case(case_name)
    tensors, forward_info = case.tensors, case.meta["case"][info_key]
    source = golden_source_latents(golden, case_name, case.meta, tensors)
    guidance = GuidedNoisePredictor(
        golden_transformer,
        tensors[f"{prefix}.t5_out"],
        tensors[f"{prefix}.context_mask"],
        source,
        guidance_mode=forward_info["state"],
        guidance_scale=1.0,
    )
    assert guidance.num_branches == forward_info["k"]
    assert guidance.cfg_masks.sum(dim=1).tolist() == forward_info["y_lens_cross_attention"]

    captured: dict[str, torch.Tensor] = {}
    modules = {
        "t_embed": golden_transformer.t_embedder,
        "t0": golden_transformer.t_block,
        "y_embed": golden_transformer.y_embedder,
        "x_tokens": golden_transformer.x_embedder,
        **{f"block{i}_out": block for i, block in enumerate(golden_transformer.blocks)},
    }
    hooks = [
        module.register_forward_hook(lambda _m, _i, output, name=name: captured.__setitem__(name, output))
        for name, module in modules.items()
    ]
    try:
        with torch.no_grad():
            output = golden_transformer(
                torch.cat([tensors[f"{prefix}.x"]] * guidance.num_branches),
                tensors[f"{prefix}.t_in"],
                guidance.cfg_captions,
                guidance.cfg_masks,
                guidance.cfg_sources,
            ).sample
    finally:
        for hook in hooks:
            hook.remove()

    assert_golden_close(captured["t_embed"], tensors[f"{prefix}.t_embed"], "t_embed")
    assert_golden_close(captured["t0"], tensors[f"{prefix}.t0"], "t0")
    assert_golden_close(captured["y_embed"][:, None], tensors[f"{prefix}.y_embed"], "y_embed")
    compared_rows = 0
    for name in ("x_tokens", *(f"block{i}_out" for i in range(len(golden_transformer.blocks)))):
        if f"{prefix}.{name}.last_row" in tensors:
            assert_golden_close(captured[name][-1:], tensors[f"{prefix}.{name}.last_row"], name)
            compared_rows += 1
    assert_golden_close(output, tensors[f"{prefix}.dit_out"], "dit_out")
    assert compared_rows in (0, 1 + len(golden_transformer.blocks))


def test_reference_latent_tokens_match_golden_vae_features(golden, golden_transformer) -> None:
    cases = [name for name in golden.case_names() if "fwd.vae_features_real" in golden.case(name).tensors]
    if not cases:
        pytest.skip("no case stores fwd.vae_features_real")
    for name in cases:
        tensors = golden.case(name).tensors
        with torch.no_grad():
            tokens = golden_transformer.embed_reference_latents(tensors["ref_vae_real"])
        assert_golden_close(tokens, tensors["fwd.vae_features_real"], f"{name}: vae_features_real")


def test_bf16_model_matches_fp32_at_the_bf16_rounded_timestep(golden, golden_transformer) -> None:
    """The bf16 regime (GPU inference) run on CPU: its only systematic difference is the rounded timestep."""
    case = golden.case(golden.case_names()[0])
    tensors, forward_info = case.tensors, case.meta["case"]["forward"]
    bf16_model = MIGETransformer2DModel.from_config(golden_transformer.config).eval()
    bf16_model.load_state_dict(golden_transformer.state_dict())
    bf16_model.to(torch.bfloat16)
    source = golden_source_latents(golden, case.name, case.meta, tensors)

    def forward(model: MIGETransformer2DModel, timestep: torch.Tensor) -> torch.Tensor:
        guidance = GuidedNoisePredictor(
            model,
            tensors["fwd.t5_out"],
            tensors["fwd.context_mask"],
            source,
            guidance_mode=forward_info["state"],
            guidance_scale=1.0,
        )
        x = torch.cat([tensors["fwd.x"]] * guidance.num_branches)
        with torch.no_grad():
            return model(x, timestep, guidance.cfg_captions, guidance.cfg_masks, guidance.cfg_sources).sample

    bf16_output = forward(bf16_model, tensors["fwd.t_in"])
    fp32_output = forward(golden_transformer, tensors["fwd.t_in"].to(torch.bfloat16).float())
    assert bf16_output.dtype == torch.bfloat16
    cosine = F.cosine_similarity(bf16_output.float().flatten(1), fp32_output.flatten(1), dim=1)
    assert cosine.min() > 0.9999
