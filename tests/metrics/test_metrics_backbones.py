"""Backbone resolution and loading through the real code paths, with tiny random models saved to temp folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import torchvision
from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

from mige_bench.errors import MigeBenchError
from mige_bench.metrics.backbones import (
    ALEXNET_CHECKPOINT,
    ALEXNET_URL,
    Backbones,
    build_smoke_clip,
    lpips_linear_weights,
    smoke_clip_tokenizer,
    state_dict_sha256,
)
from mige_bench.metrics.encoders import clip_preprocessing, dino_preprocessing
from mige_bench.metrics.regions import RegionPair
from tests.metrics.builders import noise_image

LONG_CAPTION = "a photo of a red dog " * 20  # 120 words: over 77 tokens with any CLIP tokenizer


def unit_rows(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features, dim=-1).detach().numpy()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def offline_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights root, Hugging Face cache and torch hub cache; returns the weights root."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MIGE_BENCH_HOME", raising=False)
    return tmp_path / "home"


# ----------------------------------------------------------------------------------------------------------------------
# CLIP through transformers
# ----------------------------------------------------------------------------------------------------------------------


def save_tiny_clip(folder: Path, seed: int = 1) -> CLIPModel:
    tokenizer = smoke_clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "image_size": 224,
            "patch_size": 32,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=8,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def expected_clip_image_features(model: CLIPModel, images: list) -> np.ndarray:
    with torch.no_grad():
        output = model.get_image_features(pixel_values=clip_preprocessing(224)(images, "hf"))
    return unit_rows(output if isinstance(output, torch.Tensor) else output.pooler_output)


def test_clip_saved_with_save_pretrained_loads_by_path_with_identical_features(tmp_path: Path) -> None:
    model = save_tiny_clip(tmp_path / "clip")
    images = [noise_image(1), noise_image(2, 300, 224)]
    encoder = Backbones({"clip": str(tmp_path / "clip")}).clip
    np.testing.assert_allclose(
        encoder.encode_images(images).numpy(), expected_clip_image_features(model, images), atol=1e-6
    )

    tokenizer = smoke_clip_tokenizer()
    tokens = tokenizer(["a red car"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        output = model.get_text_features(**tokens)
    expected_text = unit_rows(output if isinstance(output, torch.Tensor) else output.pooler_output)
    encoding = encoder.encode_texts(["a red car"])
    np.testing.assert_allclose(encoding.features.numpy(), expected_text, atol=1e-6)
    assert encoding.truncated == (False,)


def test_clip_text_truncation_is_flagged_at_the_77_token_boundary(smoke_backbones: Backbones) -> None:
    # The smoke tokenizer has no merges: one token per character, plus start and end tokens.
    fits, overflows = "a" * 75, "a" * 76
    assert smoke_backbones.clip.encode_texts([fits, overflows, LONG_CAPTION]).truncated == (False, True, True)


def test_hub_id_resolves_under_the_weights_root(tmp_path: Path, offline_caches: Path, monkeypatch) -> None:
    model = save_tiny_clip(offline_caches / "acme" / "tiny-clip", seed=2)
    images = [noise_image(3)]
    expected = expected_clip_image_features(model, images)
    explicit = Backbones({"clip": "acme/tiny-clip"}, home=offline_caches)
    np.testing.assert_allclose(explicit.clip.encode_images(images).numpy(), expected, atol=1e-6)
    monkeypatch.setenv("MIGE_BENCH_HOME", str(offline_caches))
    from_environment = Backbones({"clip": "acme/tiny-clip"})
    assert from_environment.provenance()["clip"]["used"] is False
    np.testing.assert_allclose(from_environment.clip.encode_images(images).numpy(), expected, atol=1e-6)
    assert from_environment.provenance()["clip"]["resolved_path"] == str(offline_caches / "acme" / "tiny-clip")


def test_hub_id_resolves_from_the_hugging_face_cache(tmp_path: Path, offline_caches: Path) -> None:
    commit = "0" * 40
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--acme--cached-clip"
    model = save_tiny_clip(repo / "snapshots" / commit, seed=3)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    images = [noise_image(4)]
    backbones = Backbones({"clip": "acme/cached-clip"}, home=offline_caches)
    np.testing.assert_allclose(
        backbones.clip.encode_images(images).numpy(), expected_clip_image_features(model, images), atol=1e-6
    )


def test_provenance_records_the_weight_file_hash(tmp_path: Path) -> None:
    save_tiny_clip(tmp_path / "clip", seed=4)
    backbones = Backbones({"clip": str(tmp_path / "clip")})
    backbones.clip.encode_images([noise_image(5)])
    record = backbones.provenance()["clip"]
    assert record["weight_sha256"] == sha256_of(tmp_path / "clip" / "model.safetensors")
    assert record["loader"] == "transformers"
    assert record["comparable"] is True
    assert record["libraries"]["transformers"]
    assert "resize shorter side to 224" in record["preprocessing"]


def test_clip_folder_without_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    save_tiny_clip(tmp_path / "clip", seed=5)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (tmp_path / "clip" / name).unlink(missing_ok=True)
    with pytest.raises(MigeBenchError, match="tokenizer"):
        _ = Backbones({"clip": str(tmp_path / "clip")}).clip


# ----------------------------------------------------------------------------------------------------------------------
# DINO through transformers
# ----------------------------------------------------------------------------------------------------------------------


def save_tiny_dino_like_the_hub(folder: Path) -> ViTModel:
    """A ViTModel saved with the hub's LayerNorm eps (1e-12), a random pooler, and non-trivial final LayerNorm."""
    torch.manual_seed(6)
    config = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        layer_norm_eps=1e-12,
    )
    model = ViTModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():
        model.layernorm.weight.uniform_(0.5, 2.0)
        model.layernorm.bias.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    return model


def post_layernorm_cls(model: ViTModel, pixels: torch.Tensor, eps: float) -> dict[str, np.ndarray]:
    """Unit-normalised candidate DINO features computed by hand, with every LayerNorm's epsilon set to ``eps``."""
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps
    with torch.no_grad():
        outputs = model(pixel_values=pixels, output_hidden_states=True)
        cls = outputs.hidden_states[-1][:, 0]  # the last block's output, before the final LayerNorm
        post_norm = torch.nn.functional.layer_norm(cls, (16,), model.layernorm.weight, model.layernorm.bias, eps=eps)
    return {"post_norm": unit_rows(post_norm), "pre_norm": unit_rows(cls), "pooler": unit_rows(outputs.pooler_output)}


def test_dino_feature_is_the_post_layernorm_cls_token_not_the_pooler(tmp_path: Path) -> None:
    model = save_tiny_dino_like_the_hub(tmp_path / "dino")
    images = [noise_image(7, 300, 260), noise_image(8)]
    features = Backbones({"dino": str(tmp_path / "dino")}).dino.encode_images(images).numpy()
    expected = post_layernorm_cls(model, dino_preprocessing()(images, "hf"), eps=1e-6)
    np.testing.assert_allclose(features, expected["post_norm"], atol=2e-6)
    assert not np.allclose(features, expected["pooler"], atol=1e-2)
    assert not np.allclose(features, expected["pre_norm"], atol=1e-2)


def test_dino_layernorm_epsilon_is_the_original_not_the_hub_config(tmp_path: Path) -> None:
    # Random-init hidden states are small, so the hub's 1e-12 visibly moves this tiny model's features.
    model = save_tiny_dino_like_the_hub(tmp_path / "dino")
    images = [noise_image(13)]
    features = Backbones({"dino": str(tmp_path / "dino")}).dino.encode_images(images).numpy()
    with_hub_eps = post_layernorm_cls(model, dino_preprocessing()(images, "hf"), eps=1e-12)["post_norm"]
    assert np.abs(features - with_hub_eps).max() > 1e-5


def test_dino_layernorm_modules_all_use_1e_6(tmp_path: Path) -> None:
    save_tiny_dino_like_the_hub(tmp_path / "dino")
    assert json.loads((tmp_path / "dino" / "config.json").read_text())["layer_norm_eps"] == 1e-12
    model = Backbones({"dino": str(tmp_path / "dino")}).dino.model
    epsilons = {module.eps for module in model.modules() if isinstance(module, torch.nn.LayerNorm)}
    assert epsilons == {1e-6}
    assert model.pooler is None


def test_a_clip_folder_given_as_dino_is_refused(tmp_path: Path) -> None:
    save_tiny_clip(tmp_path / "clip", seed=7)
    with pytest.raises(MigeBenchError, match="not a DINO ViTModel"):
        _ = Backbones({"dino": str(tmp_path / "clip")}).dino


# ----------------------------------------------------------------------------------------------------------------------
# CLIP through open_clip
# ----------------------------------------------------------------------------------------------------------------------

TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 8,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 16, "head_width": 8, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }
}


def save_tiny_open_clip(folder: Path):
    open_clip = pytest.importorskip("open_clip")
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    torch.manual_seed(8)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return open_clip, model


@pytest.mark.parametrize("point_at", ["checkpoint file", "folder", "architecture@file"])
def test_open_clip_checkpoint_loads_with_identical_features(tmp_path: Path, point_at: str) -> None:
    open_clip, model = save_tiny_open_clip(tmp_path / "oc")
    checkpoint = tmp_path / "oc" / "open_clip_pytorch_model.bin"
    spec = {"checkpoint file": str(checkpoint), "folder": str(tmp_path / "oc")}.get(point_at)
    if point_at == "architecture@file":
        # Register the tiny architecture by name, as open_clip's built-in configs (ViT-B-32-quickgelu...) are.
        (tmp_path / "configs").mkdir()
        (tmp_path / "configs" / "mige-tiny-test-clip.json").write_text(json.dumps(TINY_OPEN_CLIP["model_cfg"]))
        open_clip.add_model_config(tmp_path / "configs")
        lone = tmp_path / "elsewhere" / "weights.bin"
        lone.parent.mkdir()
        shutil.copy(checkpoint, lone)
        spec, checkpoint = f"mige-tiny-test-clip@{lone}", lone
    backbones = Backbones({"clip": spec})
    images = [noise_image(9, 230, 224)]
    with torch.no_grad():
        expected_image = unit_rows(model.encode_image(clip_preprocessing(224)(images, "hf")))
        expected_text = unit_rows(model.encode_text(open_clip.get_tokenizer("ViT-B-32")(["a dog", LONG_CAPTION])))
    np.testing.assert_allclose(backbones.clip.encode_images(images).numpy(), expected_image, atol=1e-6)
    encoding = backbones.clip.encode_texts(["a dog", LONG_CAPTION])
    np.testing.assert_allclose(encoding.features.numpy(), expected_text, atol=1e-6)
    assert encoding.truncated == (False, True)
    record = backbones.provenance()["clip"]
    assert record["loader"] == "open_clip"
    assert record["weight_sha256"] == sha256_of(checkpoint)


def test_open_clip_checkpoint_without_architecture_is_a_clear_error(tmp_path: Path) -> None:
    save_tiny_open_clip(tmp_path / "oc")
    lone = tmp_path / "lone" / "weights.bin"
    lone.parent.mkdir()
    shutil.copy(tmp_path / "oc" / "open_clip_pytorch_model.bin", lone)
    with pytest.raises(MigeBenchError, match=r"open_clip_config\.json") as error:
        _ = Backbones({"clip": str(lone)}).clip
    assert f"@{lone}" in str(error.value)


# ----------------------------------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------------------------------


def save_random_alexnet(path: Path) -> torchvision.models.AlexNet:
    torch.manual_seed(9)
    alexnet = torchvision.models.alexnet(weights=None).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(alexnet.state_dict(), path)
    return alexnet


def test_lpips_trunk_loads_offline_from_the_torchvision_checkpoint(tmp_path: Path, offline_caches: Path) -> None:
    checkpoint = offline_caches / "torchvision" / ALEXNET_CHECKPOINT
    alexnet = save_random_alexnet(checkpoint)
    backbones = Backbones({"lpips": "alex"}, home=offline_caches)
    net = backbones.lpips
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        slices = net.model.net(x)
        activations, h = [], x
        for index, layer in enumerate(alexnet.features):
            h = layer(h)
            if index in (1, 4, 7, 9, 11):  # the ReLU outputs LPIPS reads
                activations.append(h)
    for got, expected in zip(slices, activations, strict=True):
        torch.testing.assert_close(got, expected)

    first, second = noise_image(10), noise_image(11)
    unit = [
        torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None] for image in (first, second)
    ]
    with torch.no_grad():
        expected_distance = net.model(*unit, normalize=True).item()
    assert net.distance(RegionPair(first, second)) == pytest.approx(expected_distance, rel=1e-5)
    assert net.distance(RegionPair(first, first.copy())) == 0.0
    files = backbones.provenance()["lpips"]["weight_files"]
    assert files == {ALEXNET_CHECKPOINT: sha256_of(checkpoint), "alex.pth": sha256_of(lpips_linear_weights())}


def test_lpips_trunk_is_also_found_in_the_torch_hub_cache(tmp_path: Path, offline_caches: Path) -> None:
    save_random_alexnet(Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT)
    record_path = Backbones({"lpips": "alex"}, home=offline_caches).lpips
    assert record_path.model.net.slice1[0].weight.shape == (64, 3, 11, 11)


# ----------------------------------------------------------------------------------------------------------------------
# Offline errors, smoke, sharing
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_weights_offline_name_the_download_command(offline_caches: Path) -> None:
    backbones = Backbones(home=offline_caches)
    with pytest.raises(MigeBenchError) as error:
        _ = backbones.clip
    message = str(error.value)
    assert (
        f"hf download openai/clip-vit-base-patch32 --local-dir {offline_caches / 'openai' / 'clip-vit-base-patch32'}"
        in message
    )
    assert "Traceback" not in message

    with pytest.raises(MigeBenchError) as error:
        backbones.ensure_available()
    message = str(error.value)
    assert f"hf download facebook/dino-vits16 --local-dir {offline_caches / 'facebook' / 'dino-vits16'}" in message
    assert f"-o {offline_caches / 'torchvision' / ALEXNET_CHECKPOINT} {ALEXNET_URL}" in message
    assert message.count("\n  hf download ") == 2 and message.count("\n  curl ") == 1  # one line per backbone


def test_ensure_available_checks_only_the_named_backbones(offline_caches: Path) -> None:
    Backbones({"clip": "smoke"}, home=offline_caches).ensure_available(["clip"])


def test_unknown_names_and_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MigeBenchError, match="Unknown backbone 'clp'"):
        Backbones({"clp": "smoke"})
    with pytest.raises(MigeBenchError, match="fix the path"):
        _ = Backbones({"dino": str(tmp_path / "no_such_folder")}).dino
    with pytest.raises(MigeBenchError, match="not supported"):
        _ = Backbones({"lpips": "vgg"}).lpips


def test_smoke_models_are_seeded_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    first = state_dict_sha256(build_smoke_clip()[0])
    after_build = torch.rand(1)
    torch.manual_seed(123)
    assert state_dict_sha256(build_smoke_clip()[0]) == first
    assert torch.equal(torch.rand(1), after_build)


def test_smoke_backbones_are_not_comparable_and_say_so(smoke_backbones: Backbones) -> None:
    assert smoke_backbones.comparable is False
    assert Backbones({"dino": "smoke"}).comparable is False
    assert Backbones().comparable is True
    smoke_backbones.dino.encode_images([noise_image(12)])
    record = smoke_backbones.provenance()["dino"]
    assert record["comparable"] is False
    assert record["seed"] == 0
    assert record["config"]["layer_norm_eps"] == 1e-6
    assert record["weight_sha256"] == state_dict_sha256(smoke_backbones.dino.model)


def test_encoders_are_loaded_once_and_shared(smoke_backbones: Backbones) -> None:
    assert smoke_backbones.clip is smoke_backbones.clip
    assert Backbones.smoke().clip is smoke_backbones.clip


def test_unused_backbones_are_listed_as_unused(tmp_path: Path) -> None:
    backbones = Backbones({"clip": "smoke", "dino": str(tmp_path / "never_loaded")})
    assert backbones.provenance()["clip"] == {"spec": "smoke", "used": False}
    backbones.load(["clip"])
    record = backbones.provenance()
    assert record["clip"]["used"] is True
    assert record["dino"] == {"spec": str(tmp_path / "never_loaded"), "used": False}
