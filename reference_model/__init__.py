"""Reference re-implementation of MIGE (arXiv 2502.21291), weight-compatible with the official release."""

from reference_model.multimodal_encoder import (
    MULTIMODAL_ENCODER_SIZES,
    MIGEMultimodalEncoder,
    MultimodalConditioning,
    convert_original_encoder_state_dict,
)
from reference_model.original_rng import OriginalScriptsRNG
from reference_model.scheduling_mige import (
    TASK_SAMPLING_DEFAULTS,
    DPMSolverPlusPlus2M,
    GuidedNoisePredictor,
    SamplingSettings,
    sample_mige_latents,
)
from reference_model.text_processing import SegmentTokenizer, format_prompt
from reference_model.transformer_mige import (
    MIGE_TRANSFORMER_SIZES,
    MIGETransformer2DModel,
    convert_original_transformer_state_dict,
    is_original_transformer_key,
)

__all__ = [
    "MIGE_TRANSFORMER_SIZES",
    "MULTIMODAL_ENCODER_SIZES",
    "TASK_SAMPLING_DEFAULTS",
    "DPMSolverPlusPlus2M",
    "GuidedNoisePredictor",
    "MIGEMultimodalEncoder",
    "MIGETransformer2DModel",
    "MultimodalConditioning",
    "OriginalScriptsRNG",
    "SamplingSettings",
    "SegmentTokenizer",
    "convert_original_encoder_state_dict",
    "convert_original_transformer_state_dict",
    "format_prompt",
    "is_original_transformer_key",
    "sample_mige_latents",
]
