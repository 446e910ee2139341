"""MIGE sampler: schedule facts, solver exactness on analytic models, guidance rows, and golden parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mige_golden import assert_golden_close, golden_dir

from reference_model.scheduling_mige import (
    TASK_SAMPLING_DEFAULTS,
    DiscreteVPSchedule,
    DPMSolverPlusPlus2M,
    GuidedNoisePredictor,
    SamplingSettings,
    SolverTrace,
    sample_mige_latents,
)
from reference_model.transformer_mige import (
    MIGETransformer2DModel,
    convert_original_transformer_state_dict,
    transformer_config_from_original,
)

SCHEDULE = DiscreteVPSchedule()


def broadcast(values: torch.Tensor) -> torch.Tensor:
    return values[:, None, None, None]


# ---------------------------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------------------------


def test_schedule_keypoints_reproduce_the_ddpm_alpha_bar() -> None:
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alpha_bar = torch.from_numpy(np.cumprod(1 - betas))
    steps = torch.tensor([0, 1, 499, 998, 999])
    alpha = SCHEDULE.alpha(SCHEDULE.time_keypoints[steps])
    torch.testing.assert_close(alpha.double() ** 2, alpha_bar[steps], rtol=1e-5, atol=1e-7)
    # Spec §3.5.1: lambda at the first solver time is about -5.0588, so the -5.1 clip drops nothing.
    assert SCHEDULE.half_log_snr(torch.tensor(1.0)).item() == pytest.approx(-5.0588, abs=1e-4)
    assert len(SCHEDULE.log_alpha_keypoints) == 1000


def test_log_alpha_is_linear_between_keypoints_and_beyond_the_ends() -> None:
    t0, t1 = SCHEDULE.time_keypoints[10], SCHEDULE.time_keypoints[11]
    y0, y1 = SCHEDULE.log_alpha_keypoints[10], SCHEDULE.log_alpha_keypoints[11]
    torch.testing.assert_close(SCHEDULE.log_alpha((t0 + t1) / 2), ((y0 + y1) / 2).reshape(1))
    slope = (SCHEDULE.log_alpha_keypoints[1] - SCHEDULE.log_alpha_keypoints[0]) / 1e-3
    extrapolated = SCHEDULE.log_alpha(torch.tensor(0.0005))
    torch.testing.assert_close(extrapolated, (SCHEDULE.log_alpha_keypoints[0] - 0.0005 * slope).reshape(1))
    assert SCHEDULE.log_alpha(torch.tensor(0.3)).shape == (1,)  # 1-element, never 0-dim (dtype promotion)


def test_time_grid_runs_uniformly_from_one_to_the_first_training_step() -> None:
    grid = SCHEDULE.time_uniform_grid(4)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75025, 0.5005, 0.25075, 0.001]))
    assert SCHEDULE.model_time(grid[0]).item() == 999.0


def test_bf16_rounded_model_timesteps_match_the_spec_tables() -> None:
    """Spec §3.5.4: what a bf16 network sees for 50 and 60 steps."""
    fifty = SCHEDULE.model_time(SCHEDULE.time_uniform_grid(50)[:-1]).to(torch.bfloat16).float()
    assert fifty.tolist() == [1000.0 - 20 * j for j in range(50)]
    sixty = SCHEDULE.model_time(SCHEDULE.time_uniform_grid(60)[:-1]).to(torch.bfloat16).float()
    expected = [1000, 984, 964, 948, 932, 916, 900, 884, 864, 848, 832, 816, 800, 784, 764, 748, 732, 716, 700, 684]
    expected += [664, 648, 632, 616, 600, 584, 568, 548, 532, 516, 500, 482, 466, 450, 432, 416, 400, 382, 366, 350]
    expected += [334, 316, 300, 284, 266, 250, 233, 216, 200, 183, 166, 150, 133, 116.5, 100, 83, 66.5, 50, 33.25]
    expected += [16.625]
    assert sixty.tolist() == expected


# ---------------------------------------------------------------------------------------------------------------
# Solver on analytic models
# ---------------------------------------------------------------------------------------------------------------


def point_mass_noise_fn(target: torch.Tensor):
    """Exact noise prediction when the data distribution is a single point ``target``."""

    def noise_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - broadcast(SCHEDULE.alpha(t)) * target) / broadcast(SCHEDULE.sigma(t))

    return noise_fn


def test_solver_is_exact_when_the_data_is_a_single_point() -> None:
    """Every data prediction is the point itself, so each update follows the ODE exactly."""
    target = torch.full((2, 4, 8, 8), 0.7)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    trace = SolverTrace()
    final = DPMSolverPlusPlus2M().sample(point_mass_noise_fn(target), noise, steps=6, trace=trace)

    assert len(trace.intermediates) == 7 and len(trace.data_predictions) == 6
    for prediction in trace.data_predictions:
        torch.testing.assert_close(prediction, target, rtol=0, atol=1e-5)
    start_eps = (noise - SCHEDULE.alpha(trace.timesteps[0]) * target) / SCHEDULE.sigma(trace.timesteps[0])
    for x, t in zip(trace.intermediates, trace.timesteps, strict=True):
        torch.testing.assert_close(x, SCHEDULE.alpha(t) * target + SCHEDULE.sigma(t) * start_eps, rtol=0, atol=1e-5)
    assert final is trace.intermediates[-1]


def test_solver_converges_at_second_order_on_gaussian_data() -> None:
    mean, std = 0.3, 0.5

    def gaussian_noise_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = broadcast(SCHEDULE.alpha(t)), broadcast(SCHEDULE.sigma(t))
        return sigma * (x - alpha * mean) / (alpha**2 * std**2 + sigma**2)

    def exact_solution(noise: torch.Tensor) -> torch.Tensor:
        alpha_start, sigma_start = SCHEDULE.alpha(torch.tensor(1.0)), SCHEDULE.sigma(torch.tensor(1.0))
        alpha_end, sigma_end = SCHEDULE.alpha(torch.tensor(1e-3)), SCHEDULE.sigma(torch.tensor(1e-3))
        spread_start = torch.sqrt(alpha_start**2 * std**2 + sigma_start**2)
        spread_end = torch.sqrt(alpha_end**2 * std**2 + sigma_end**2)
        return alpha_end * mean + spread_end * (noise - alpha_start * mean) / spread_start

    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    exact = exact_solution(noise)
    errors = [
        (DPMSolverPlusPlus2M().sample(gaussian_noise_fn, noise, steps) - exact).abs().max().item() for steps in (40, 80)
    ]
    assert errors[1] < errors[0] / 3  # halving the step size cuts the error by ~4 for a 2nd-order method


def test_solver_calls_the_network_once_per_step_with_broadcast_times() -> None:
    seen_times = []

    def recording_noise_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen_times.append(t.clone())
        return torch.zeros_like(x)

    DPMSolverPlusPlus2M().sample(recording_noise_fn, torch.randn(3, 4, 2, 2), steps=5)
    grid = SCHEDULE.time_uniform_grid(5)
    assert len(seen_times) == 5
    for call, t in enumerate(seen_times):
        assert t.shape == (3,)
        assert torch.equal(t, grid[call].expand(3))


def test_solver_needs_two_steps() -> None:
    with pytest.raises(ValueError, match="at least 2 steps"):
        DPMSolverPlusPlus2M().sample(point_mass_noise_fn(torch.zeros(1)), torch.zeros(1, 1, 1, 1), steps=1)


# ---------------------------------------------------------------------------------------------------------------
# Classifier-free guidance rows and arithmetic
# ---------------------------------------------------------------------------------------------------------------


class RowCodingTransformer(torch.nn.Module):
    """Stand-in DiT whose noise output says which conditioning a row got: +1 caption, +10 source."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("null_caption", torch.full((6, 3), -1.0, dtype=dtype))
        self.masks: list[torch.Tensor] = []
        self.timesteps: list[torch.Tensor] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.null_caption.dtype

    def caption_keys_values(self, encoder_hidden_states):
        return [(encoder_hidden_states, encoder_hidden_states)]  # one "block", keyed by the caption states themselves

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, source_latents, **kwargs):
        self.masks.append(encoder_attention_mask)
        self.timesteps.append(timestep)
        if kwargs.get("caption_keys_values") is not None:
            encoder_hidden_states = kwargs["caption_keys_values"][0][0]
        has_caption = (encoder_hidden_states[:, 0, 0] != -1).float()
        has_source = (source_latents.flatten(1).abs().sum(dim=1) > 0).float()
        eps = broadcast(has_caption + 10 * has_source).expand_as(hidden_states)
        variance = torch.full_like(eps, 1e6)  # must be dropped by the guidance
        return (torch.cat([eps, variance], dim=1).to(self.dtype),)


def guidance_inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([2, 5, 3])[:batch]
    return {
        "caption_states": torch.ones(batch, 6, 3),
        "caption_mask": (torch.arange(6)[None] < lengths[:, None]).long(),
        "source_latents": torch.ones(batch, 4, 2, 2),
    }


def test_subject_guidance_rows_are_uncond_then_cond() -> None:
    model = RowCodingTransformer()
    inputs = guidance_inputs()
    inputs["source_latents"] = torch.zeros_like(inputs["source_latents"])  # subject-driven: no source
    guided = GuidedNoisePredictor(model, **inputs, guidance_mode="subject", guidance_scale=7.0)
    eps = guided(torch.zeros(2, 4, 2, 2), torch.ones(2))
    # rows: uncond (code 0), cond (code 1) -> 0 + 7 * (1 - 0)
    torch.testing.assert_close(eps, torch.full((2, 4, 2, 2), 7.0))
    assert torch.equal(model.masks[0], inputs["caption_mask"].repeat(2, 1))
    assert torch.equal(model.timesteps[0], torch.full((4,), 999.0))


def test_edit_guidance_rows_are_null_null_source_then_full() -> None:
    model = RowCodingTransformer()
    inputs = guidance_inputs(batch=3)
    guided = GuidedNoisePredictor(
        model, **inputs, guidance_mode="edit", guidance_scale=5.0, source_guidance_scale=1.5, record_calls=True
    )
    eps = guided(torch.zeros(3, 4, 2, 2), torch.full((3,), 0.5))
    # rows: null caption + zero source (0), null caption + source (10), caption + source (11)
    torch.testing.assert_close(eps, torch.full((3, 4, 2, 2), 0 + 1.5 * (10 - 0) + 5.0 * (11 - 10)))
    # The null-caption rows reuse every sample's own caption mask, block after block.
    assert torch.equal(model.masks[0], inputs["caption_mask"].repeat(3, 1))
    (call,) = guided.calls
    assert call.raw_model_out.shape == (9, 4, 2, 2)
    assert call.raw_model_out[:, 0, 0, 0].tolist() == [0, 0, 0, 10, 10, 10, 11, 11, 11]


def test_guidance_runs_in_the_network_dtype_and_the_data_prediction_in_float32() -> None:
    model = RowCodingTransformer(dtype=torch.bfloat16)
    guided = GuidedNoisePredictor(model, **guidance_inputs(), guidance_mode="edit", guidance_scale=5.0)
    x = torch.randn(2, 4, 2, 2)
    assert guided(x, torch.ones(2)).dtype == torch.bfloat16
    assert DPMSolverPlusPlus2M().data_prediction(guided, x, torch.tensor(0.5)).dtype == torch.float32


def test_unknown_guidance_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="guidance_mode"):
        GuidedNoisePredictor(RowCodingTransformer(), **guidance_inputs(), guidance_mode="video", guidance_scale=1.0)


def test_task_defaults_follow_the_inference_scripts() -> None:
    assert TASK_SAMPLING_DEFAULTS["subject"] == SamplingSettings("subject", 50, 7.0, 1.0)
    assert TASK_SAMPLING_DEFAULTS["edit"] == SamplingSettings("edit", 60, 5.0, 1.0)
    assert TASK_SAMPLING_DEFAULTS["subject_edit"] == SamplingSettings("edit", 60, 5.0, 1.0)


def test_sampling_a_tiny_dit_is_deterministic_and_records_every_call() -> None:
    torch.manual_seed(0)
    model = MIGETransformer2DModel(
        input_size=8, hidden_size=32, depth=1, num_heads=2, caption_channels=16, model_max_length=10
    ).eval()
    generator = torch.Generator().manual_seed(1)
    captions, mask = torch.randn(2, 10, 16, generator=generator), torch.ones(2, 10, dtype=torch.long)
    source, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    settings = SamplingSettings("edit", steps=3, guidance_scale=5.0, source_guidance_scale=1.5)

    first = sample_mige_latents(model, captions, mask, source, noise, settings, record=True)
    second = sample_mige_latents(model, captions, mask, source, noise, settings)
    torch.testing.assert_close(first.latents, second.latents, rtol=0, atol=0)
    assert first.latents.shape == (2, 4, 8, 8) and torch.isfinite(first.latents).all()
    assert len(first.calls) == 3 and len(first.trace.intermediates) == 4
    assert first.calls[0].raw_model_out.shape == (6, 4, 8, 8)
    assert second.trace is None and second.calls == []


# ---------------------------------------------------------------------------------------------------------------
# Parity with the original code (golden fixtures)
# ---------------------------------------------------------------------------------------------------------------


def golden_sampling_cases() -> list:
    cases = [
        path.stem
        for path in sorted(golden_dir().glob("case_*.json"))
        if "dpms" in json.loads(path.read_text()).get("case", {})
    ]
    return cases or [pytest.param(None, marks=pytest.mark.skip(reason=f"no golden fixtures at {golden_dir()}"))]


@pytest.fixture(scope="module")
def golden_transformer(golden) -> MIGETransformer2DModel:
    config = transformer_config_from_original({**golden.config["mige_defaults_kept"], **golden.config["mige_kwargs"]})
    model = MIGETransformer2DModel(**config).eval()
    model.load_state_dict(convert_original_transformer_state_dict(golden.state_dict(), model), strict=True)
    return model


def golden_sampling_inputs(golden, case_name: str) -> tuple[dict[str, torch.Tensor], SamplingSettings, dict]:
    case = golden.case(case_name)
    tensors, meta = case.tensors, case.meta["case"]
    if "members" in meta:  # a batch of other cases' conditions, in order
        source = torch.stack([golden.case(f"case_{member}").tensors["source"] for member in meta["members"]])
    else:
        source = tensors["source"][None]
    dpms = meta["dpms"]
    assert dpms["algorithm_type"] == "dpmsolver++" and dpms["order"] == 2 and dpms["method"] == "multistep"
    assert dpms["skip_type"] == "time_uniform" and dpms["lower_order_final"] is True
    settings = SamplingSettings(dpms["uncondition"], dpms["steps"], dpms["cfg_scale_y"], dpms["cfg_scale_s"])
    inputs = {
        "caption_states": tensors["fwd.t5_out"],
        "caption_mask": tensors["fwd.context_mask"],
        "source_latents": source,
    }
    return inputs, settings, tensors


@pytest.mark.parametrize("case_name", golden_sampling_cases())
def test_sampling_matches_golden_solver_run(golden, golden_transformer, case_name) -> None:
    inputs, settings, tensors = golden_sampling_inputs(golden, case_name)
    result = sample_mige_latents(
        golden_transformer, initial_noise=tensors["dpms.z"], settings=settings, record=True, **inputs
    )

    torch.testing.assert_close(result.trace.timesteps, tensors["dpms.solver_timesteps"], rtol=0, atol=1e-4)
    assert len(result.calls) == golden.case(case_name).meta["case"]["dpms"]["network_evaluations"]
    for index, call in enumerate(result.calls):
        if f"dpms.sample.call{index}.t_model_input" in tensors:
            expected_t = tensors[f"dpms.sample.call{index}.t_model_input"]
            torch.testing.assert_close(call.t_model_input, expected_t, rtol=0, atol=1e-4)
            assert_golden_close(call.raw_model_out, tensors[f"dpms.sample.call{index}.raw_model_out"], f"call{index}")
    assert len(result.trace.intermediates) == settings.steps + 1
    for index, x in enumerate(result.trace.intermediates):
        assert_golden_close(x, tensors[f"dpms.sample.intermediate{index}"], f"intermediate{index}")
    assert_golden_close(result.latents, tensors["dpms.sample.final"], "final")


@pytest.mark.parametrize("case_name", golden_sampling_cases())
def test_guided_noise_and_data_prediction_match_golden(golden, golden_transformer, case_name) -> None:
    inputs, settings, tensors = golden_sampling_inputs(golden, case_name)
    evaluations = sorted({name.split(".")[1] for name in tensors if name.startswith("dpms.guided")})
    assert evaluations, "case has no guided evaluations"
    for evaluation in evaluations:
        prefix = f"dpms.{evaluation}"
        guided = GuidedNoisePredictor(
            golden_transformer,
            **inputs,
            guidance_mode=settings.guidance_mode,
            guidance_scale=settings.guidance_scale,
            source_guidance_scale=settings.source_guidance_scale,
            record_calls=True,
        )
        with torch.no_grad():
            x0 = DPMSolverPlusPlus2M().data_prediction(guided, tensors["dpms.z"], tensors[f"{prefix}.t_continuous"])
        (call,) = guided.calls
        torch.testing.assert_close(call.t_model_input, tensors[f"{prefix}.t_model_input"], rtol=0, atol=1e-4)
        if f"{prefix}.raw_model_out" in tensors:
            assert_golden_close(call.raw_model_out, tensors[f"{prefix}.raw_model_out"], f"{evaluation}.raw_model_out")
        assert_golden_close(call.guided_eps, tensors[f"{prefix}.eps"], f"{evaluation}.eps")
        assert_golden_close(x0, tensors[f"{prefix}.x0"], f"{evaluation}.x0")
