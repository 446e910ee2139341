"""MIGE's sampler: DPM-Solver++(2M) on the continuous discrete-VP schedule, with MIGE's classifier-free guidance.

Contract: ``MIGE_SPEC.md`` §3.5-3.6 and §6.6. The original runs the reference DPM-Solver code
(``diffusion/model/dpm_solver.py``: ``NoiseScheduleVP('discrete')``, ``model_wrapper`` with classifier-free
guidance, ``DPM_Solver(algorithm_type="dpmsolver++").sample(order=2, skip_type="time_uniform",
method="multistep")``). diffusers' ``DPMSolverMultistepScheduler`` is not equivalent: it works on integer timesteps
and discrete sigmas, while the original evaluates a piecewise-linear log-alpha at fractional continuous times and
stops at ``t = 1/N`` without denoising to zero.

Precision follows the original (§1.11): schedule quantities and the solver state are float32; ``alpha``,
``sigma`` and ``lambda`` are 1-element tensors (not 0-dim), so a bf16 noise prediction is promoted to float32
when the data prediction is formed; the guidance combination runs in the network's output dtype (bf16 on GPU) in
the original's operation order. Conditioning (T5 states, mask, source latent) is computed once by the caller and
the CFG batch is assembled once per sampling run, not at every step as in the original scripts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from reference_model.transformer_mige import MIGETransformer2DModel

logger = logging.getLogger(__name__)

# A noise predictor maps (x [B, ...] float32, continuous time t [B]) to the (guided) noise prediction [B, ...].
NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GuidanceMode = Literal["subject", "edit"]


#################################################################################
#                       Continuous-time discrete-VP schedule                    #
#################################################################################


class DiscreteVPSchedule:
    """The DDPM linear-beta schedule seen as a continuous-time VP process (``NoiseScheduleVP('discrete')``).

    Discrete step ``n`` (0..N-1) sits at continuous time ``t_n = (n + 1) / N``; ``log alpha(t)`` is the
    piecewise-linear interpolation of ``0.5 * cumsum(log(1 - beta))`` between these keypoints, extrapolated
    linearly beyond the ends. ``alpha = exp(log alpha)``, ``sigma = sqrt(1 - alpha²)`` and the half-log-SNR
    ``lambda = log alpha - log sigma``.

    Args:
        num_train_timesteps: N, the number of discrete training steps.
        beta_start: First beta of the linear schedule.
        beta_end: Last beta of the linear schedule.
        clipped_lambda: Keypoints whose half-log-SNR falls below this are dropped (the reference code's numerical
            clip; a no-op for the linear schedule, whose minimum is about -5.06).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clipped_lambda: float = -5.1,
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        # Same float64 path as the original: numpy linspace, torch log/cumsum, then one cast to float32.
        betas = torch.from_numpy(np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64))
        log_alphas = 0.5 * torch.log(1 - betas).cumsum(dim=0)  # [N] float64
        lambdas = log_alphas - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))  # [N]
        num_clipped = int((lambdas < clipped_lambda).sum())
        if num_clipped:
            log_alphas = log_alphas[:-num_clipped]
        self.log_alpha_keypoints = log_alphas.to(torch.float32)  # [K]
        self.time_keypoints = torch.linspace(0.0, 1.0, num_train_timesteps + 1)[1:][: len(log_alphas)]  # [K]

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha(t)`` by piecewise-linear interpolation; returns shape ``[t.numel()]`` (0-dim -> ``[1]``).

        The segment containing ``t`` is the one ending at the first keypoint ``>= t``. At an exact keypoint this
        picks the left segment, whose value equals the keypoint's within one ulp; the original locates segments
        with a sort whose tie order is not specified (the grids only hit keypoints for 60 steps, at 0.667 and
        0.334).
        """
        x = t.reshape(-1).to(torch.float32).contiguous()  # [M]
        xp = self.time_keypoints.to(x.device)  # [K]
        yp = self.log_alpha_keypoints.to(x.device)  # [K]
        start = (torch.searchsorted(xp, x) - 1).clamp(0, xp.numel() - 2)  # [M] left keypoint of the segment
        x0, x1, y0, y1 = xp[start], xp[start + 1], yp[start], yp[start + 1]  # [M] each
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)  # [M], the original's evaluation order

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha(t) = exp(log alpha(t))``, shape ``[t.numel()]``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sqrt(1 - exp(2 log alpha(t)))``, shape ``[t.numel()]``."""
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log alpha(t) - log sigma(t)``, shape ``[t.numel()]``."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """Network timestep for continuous time ``t``: ``(t - 1/N) * 1000``, so ``t = 1`` gives 999."""
        return (t - 1.0 / self.num_train_timesteps) * 1000.0

    def time_uniform_grid(self, steps: int, t_start: float = 1.0, t_end: float | None = None) -> torch.Tensor:
        """``steps + 1`` uniformly spaced continuous times from ``t_start`` down to ``t_end`` (default ``1/N``)."""
        t_end = 1.0 / self.num_train_timesteps if t_end is None else t_end
        return torch.linspace(t_start, t_end, steps + 1)  # [steps + 1] float32


#################################################################################
#                               DPM-Solver++(2M)                                #
#################################################################################


@dataclass
class SolverTrace:
    """What the solver saw, filled in by :meth:`DPMSolverPlusPlus2M.sample` when one is passed.

    Attributes:
        timesteps: The continuous time grid ``[steps + 1]``.
        intermediates: ``x`` at every grid time: the initial noise, then after each step (``steps + 1`` tensors).
        data_predictions: The data prediction ``x0`` of every network call (``steps`` tensors).
    """

    timesteps: torch.Tensor | None = None
    intermediates: list[torch.Tensor] = field(default_factory=list)
    data_predictions: list[torch.Tensor] = field(default_factory=list)


class DPMSolverPlusPlus2M:
    """Multistep second-order DPM-Solver++ (data prediction, ``solver_type='dpmsolver'``), time-uniform grid.

    With ``h_j = lambda(t_j) - lambda(t_{j-1})``, ``m_j = x0(x_j, t_j)`` and ``phi = expm1(-h_j)``::

        step 1 (and the last step when steps < 10):  x_j = sigma_j/sigma_{j-1} x - alpha_j phi m_{j-1}
        otherwise:  D = (m_{j-1} - m_{j-2}) h_j / h_{j-1}
                    x_j = sigma_j/sigma_{j-1} x - alpha_j phi m_{j-1} - 0.5 alpha_j phi D

    One network call per step (none after the last step); ends at ``t = 1/N`` without denoising to zero.
    (Lu et al., "DPM-Solver++", arXiv 2211.01095; spec §3.5.3.)

    Args:
        schedule: The noise schedule (default: MIGE's linear 1000-step schedule).
    """

    def __init__(self, schedule: DiscreteVPSchedule | None = None) -> None:
        self.schedule = schedule or DiscreteVPSchedule()

    def data_prediction(self, noise_fn: NoisePredictor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0 = (x - sigma(t) * eps(x, t)) / alpha(t)`` for one solver time ``t`` (0-dim or ``[1]``).

        ``alpha`` and ``sigma`` are ``[1]`` float32 tensors, so a bf16 ``eps`` is promoted to float32 here.
        """
        eps = noise_fn(x, t.reshape(-1).expand(x.shape[0]))  # [B, C, H, W]
        sigma = self.schedule.sigma(t)  # [1]
        alpha = self.schedule.alpha(t)  # [1]
        return (x - sigma * eps) / alpha  # [B, C, H, W] float32

    def _first_order_update(
        self, x: torch.Tensor, t_prev: torch.Tensor, t: torch.Tensor, x0_prev: torch.Tensor
    ) -> torch.Tensor:
        schedule = self.schedule
        h = schedule.half_log_snr(t) - schedule.half_log_snr(t_prev)  # [1]
        phi = torch.expm1(-h)  # [1]
        return schedule.sigma(t) / schedule.sigma(t_prev) * x - schedule.alpha(t) * phi * x0_prev

    def _second_order_update(
        self,
        x: torch.Tensor,
        t_prev_prev: torch.Tensor,
        t_prev: torch.Tensor,
        t: torch.Tensor,
        x0_prev_prev: torch.Tensor,
        x0_prev: torch.Tensor,
    ) -> torch.Tensor:
        schedule = self.schedule
        lambda_prev_prev = schedule.half_log_snr(t_prev_prev)  # [1]
        lambda_prev = schedule.half_log_snr(t_prev)  # [1]
        lambda_t = schedule.half_log_snr(t)  # [1]
        h_prev = lambda_prev - lambda_prev_prev  # [1]
        h = lambda_t - lambda_prev  # [1]
        ratio = h_prev / h  # [1]
        slope = (1.0 / ratio) * (x0_prev - x0_prev_prev)  # [B, C, H, W]
        alpha_phi = schedule.alpha(t) * torch.expm1(-h)  # [1]
        return (schedule.sigma(t) / schedule.sigma(t_prev)) * x - alpha_phi * x0_prev - 0.5 * alpha_phi * slope

    def sample(
        self,
        noise_fn: NoisePredictor,
        x: torch.Tensor,
        steps: int,
        *,
        lower_order_final: bool = True,
        trace: SolverTrace | None = None,
    ) -> torch.Tensor:
        """Integrate the diffusion ODE from ``t = 1`` to ``t = 1/N`` in ``steps`` network calls.

        Args:
            noise_fn: Guided noise predictor, called with ``x`` (float32) and the time broadcast to ``[B]``.
            x: Initial noise ``[B, C, H, W]`` (float32).
            steps: Number of solver steps (= network calls), at least 2.
            lower_order_final: Use a first-order last step when ``steps < 10`` (the reference default; never
                active at MIGE's 50/60 steps).
            trace: If given, receives the time grid, every intermediate ``x`` and every data prediction.

        Returns:
            The latent at ``t = 1/N``, float32 ``[B, C, H, W]``.
        """
        if steps < 2:
            raise ValueError(f"multistep DPM-Solver++(2M) needs at least 2 steps, got {steps}")
        timesteps = self.schedule.time_uniform_grid(steps).to(x.device)  # [steps + 1]
        x0_history = [self.data_prediction(noise_fn, x, timesteps[0])]  # data predictions m_0, m_1, ...
        if trace is not None:
            trace.timesteps = timesteps
            trace.intermediates.append(x)
            trace.data_predictions.append(x0_history[-1])

        for step in range(1, steps + 1):
            t_prev, t = timesteps[step - 1], timesteps[step]
            first_order = step == 1 or (lower_order_final and steps < 10 and step == steps)
            if first_order:
                x = self._first_order_update(x, t_prev, t, x0_history[-1])
            else:
                x = self._second_order_update(x, timesteps[step - 2], t_prev, t, x0_history[-2], x0_history[-1])
            if trace is not None:
                trace.intermediates.append(x)
            if step < steps:  # no network call after the last step
                x0_history = [x0_history[-1], self.data_prediction(noise_fn, x, t)]
                if trace is not None:
                    trace.data_predictions.append(x0_history[-1])
        return x


#################################################################################
#                         MIGE classifier-free guidance                         #
#################################################################################


@dataclass(frozen=True)
class SamplingSettings:
    """Sampler settings of one MIGE task.

    Attributes:
        guidance_mode: ``"subject"`` (2-way CFG: rows ``[uncond, cond]``) or ``"edit"`` (3-way CFG: rows
            ``[null caption + zero source, null caption + source, caption + source]``).
        steps: Solver steps (= network calls).
        guidance_scale: Instruction (caption) guidance scale ``s_y``.
        source_guidance_scale: Source-image guidance scale ``s_s`` (``"edit"`` mode only).
    """

    guidance_mode: GuidanceMode
    steps: int
    guidance_scale: float
    source_guidance_scale: float = 1.0


# The inference scripts' defaults per task kind (spec §3.0).
TASK_SAMPLING_DEFAULTS: dict[str, SamplingSettings] = {
    "subject": SamplingSettings(guidance_mode="subject", steps=50, guidance_scale=7.0),
    "edit": SamplingSettings(guidance_mode="edit", steps=60, guidance_scale=5.0, source_guidance_scale=1.0),
    "subject_edit": SamplingSettings(guidance_mode="edit", steps=60, guidance_scale=5.0, source_guidance_scale=1.0),
}


@dataclass
class GuidedCall:
    """One network evaluation made through :class:`GuidedNoisePredictor` (recorded on request).

    Attributes:
        t_model_input: Network timesteps of the CFG batch ``[k*B]`` (before any dtype rounding).
        raw_model_out: Noise half of the network output ``[k*B, C, H, W]``, rows in CFG order.
        guided_eps: The guided noise ``[B, C, H, W]``.
    """

    t_model_input: torch.Tensor
    raw_model_out: torch.Tensor
    guided_eps: torch.Tensor


class GuidedNoisePredictor:
    """MIGE's guided noise prediction ``eps~(x, t)`` around the DiT, with precomputed conditioning.

    The CFG batch (caption rows, masks, source rows) is assembled once here. Rows are ordered as in the original:
    ``"subject"``: ``[null caption; caption]`` with the source on both; ``"edit"``: ``[null caption + zero source;
    null caption + source; caption + source]``; each block holds the B samples in order. The null caption rows
    reuse each sample's own caption mask, so the unconditional branch sees the first ``len_b`` null tokens.

    Guidance, in the network output dtype and the original's operation order (each op rounds once):

    * subject: ``eps_u + s_y * (eps_c - eps_u)``
    * edit: ``eps_00 + s_s * (eps_0s - eps_00) + s_y * (eps_ys - eps_0s)`` (all three rows are evaluated even
      when ``s_s = 1``: they cancel only up to rounding)

    Args:
        transformer: The DiT.
        caption_states: T5 encoder output ``[B, L, caption_channels]``.
        caption_mask: Its padding mask ``[B, L]`` (1 = real token).
        source_latents: Source latents ``[B, C, H, W]`` (0.18215-scaled; zeros for subject-driven generation).
        guidance_mode: ``"subject"`` or ``"edit"``.
        guidance_scale: ``s_y``.
        source_guidance_scale: ``s_s`` (edit mode only).
        schedule: The schedule that converts continuous time to network time.
        record_calls: Keep a :class:`GuidedCall` per evaluation in :attr:`calls`.
    """

    def __init__(
        self,
        transformer: MIGETransformer2DModel,
        caption_states: torch.Tensor,
        caption_mask: torch.Tensor,
        source_latents: torch.Tensor,
        *,
        guidance_mode: GuidanceMode,
        guidance_scale: float,
        source_guidance_scale: float = 1.0,
        schedule: DiscreteVPSchedule | None = None,
        record_calls: bool = False,
    ) -> None:
        self.transformer = transformer
        self.guidance_mode = guidance_mode
        self.guidance_scale = guidance_scale
        self.source_guidance_scale = source_guidance_scale
        self.schedule = schedule or DiscreteVPSchedule()
        self.record_calls = record_calls
        self.calls: list[GuidedCall] = []

        batch = caption_states.shape[0]
        null_caption = transformer.null_caption[None].expand(batch, -1, -1)  # [B, L, C_cap]
        if guidance_mode == "subject":
            captions = [null_caption, caption_states]
            sources = [source_latents, source_latents]
        elif guidance_mode == "edit":
            captions = [null_caption, null_caption, caption_states]
            sources = [torch.zeros_like(source_latents), source_latents, source_latents]
        else:
            raise ValueError(f"guidance_mode must be 'subject' or 'edit', got {guidance_mode!r}")
        self.num_branches = len(captions)
        dtype = transformer.dtype
        self.cfg_captions = torch.cat([c.to(dtype) for c in captions])  # [k*B, L, C_cap]
        self.cfg_masks = caption_mask.repeat(self.num_branches, 1)  # [k*B, L]
        self.cfg_sources = torch.cat(sources)  # [k*B, C, H, W]
        # The captions' cross-attention keys and values are the same at every step: computed once, here.
        with torch.no_grad():
            self.cfg_caption_kv = transformer.caption_keys_values(self.cfg_captions)  # depth x 2 x [k*B, H, L, d]

    def __call__(self, x: torch.Tensor, t_continuous: torch.Tensor) -> torch.Tensor:
        """Guided noise for latents ``x`` ``[B, C, H, W]`` at continuous times ``t_continuous`` ``[B]``."""
        x_in = torch.cat([x] * self.num_branches)  # [k*B, C, H, W]
        t_in = self.schedule.model_time(torch.cat([t_continuous] * self.num_branches))  # [k*B]
        out = self.transformer(
            x_in,
            t_in,
            None,
            self.cfg_masks,
            self.cfg_sources,
            return_dict=False,
            caption_keys_values=self.cfg_caption_kv,
        )[0]  # [k*B, 2C, H, W]
        eps_rows = out[:, : x.shape[1]]  # [k*B, C, H, W]: the learned-variance half is dropped
        guided = self._combine(eps_rows.chunk(self.num_branches))  # [B, C, H, W]
        if self.record_calls:
            self.calls.append(GuidedCall(t_in, eps_rows, guided))
        return guided

    def _combine(self, branches: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.guidance_mode == "subject":
            eps_uncond, eps_cond = branches
            return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
        eps_no_caption_no_source, eps_no_caption, eps_full = branches
        return (
            eps_no_caption_no_source
            + self.source_guidance_scale * (eps_no_caption - eps_no_caption_no_source)
            + self.guidance_scale * (eps_full - eps_no_caption)
        )


@dataclass
class MIGESamplingOutput:
    """Result of :func:`sample_mige_latents`.

    Attributes:
        latents: Final latents ``[B, C, H, W]`` float32 (before ``/ 0.18215`` and VAE decoding).
        trace: Solver trace (time grid, intermediates, data predictions) when recording was requested.
        calls: Every network evaluation (``GuidedCall``) when recording was requested, in call order.
    """

    latents: torch.Tensor
    trace: SolverTrace | None = None
    calls: list[GuidedCall] = field(default_factory=list)


@torch.no_grad()
def sample_mige_latents(
    transformer: MIGETransformer2DModel,
    caption_states: torch.Tensor,
    caption_mask: torch.Tensor,
    source_latents: torch.Tensor,
    initial_noise: torch.Tensor,
    settings: SamplingSettings,
    *,
    record: bool = False,
) -> MIGESamplingOutput:
    """Sample MIGE latents with DPM-Solver++(2M) and MIGE's classifier-free guidance.

    Args:
        transformer: The DiT (fp32 on CPU for tests; bf16 on GPU reproduces the original's precision).
        caption_states: T5 encoder output of the multimodal instruction ``[B, L, caption_channels]``.
        caption_mask: Its padding mask ``[B, L]``.
        source_latents: 0.18215-scaled source latents ``[B, C, H, W]``, zeros for subject-driven generation.
        initial_noise: ``z ~ N(0, I)`` ``[B, C, H, W]`` float32.
        settings: Steps and guidance (see :data:`TASK_SAMPLING_DEFAULTS`).
        record: Keep the solver trace and every network call (for parity tests and debugging).

    Returns:
        The final latents, plus the trace and calls when ``record`` is set.
    """
    solver = DPMSolverPlusPlus2M()
    noise_fn = GuidedNoisePredictor(
        transformer,
        caption_states,
        caption_mask,
        source_latents.to(initial_noise.device),
        guidance_mode=settings.guidance_mode,
        guidance_scale=settings.guidance_scale,
        source_guidance_scale=settings.source_guidance_scale,
        schedule=solver.schedule,
        record_calls=record,
    )
    trace = SolverTrace() if record else None
    latents = solver.sample(noise_fn, initial_noise.to(torch.float32), settings.steps, trace=trace)
    logger.debug("sampled %d latents in %d steps (%s guidance)", len(latents), settings.steps, settings.guidance_mode)
    return MIGESamplingOutput(latents=latents, trace=trace, calls=noise_fn.calls)
