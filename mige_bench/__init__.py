"""mige-bench: comparable, traceable scores for multimodal instruction-based image generation and editing."""
