"""The bundled demo task: six tiny editing samples drawn by code (licence-clean, nothing downloaded).

Each sample is a coloured shape on a background; the instruction changes one attribute, and the target image is the
source drawn with that change. It exists so ``make demo`` and the end-to-end tests run anywhere in seconds.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from mige_bench.images import ImageRef
from mige_bench.sample import ModelInputs, Sample
from mige_bench.task import Task

SIZE = 96
DATA_KEYS: frozenset[str] = frozenset()

# (id, category, (shape, shape colour, background) before, after, instruction)
_EDITS = [
    ("red_circle", "color", ("circle", "blue", "white"), ("circle", "red", "white"), "make the circle red"),
    ("green_square", "color", ("square", "yellow", "gray"), ("square", "green", "gray"), "turn the square green"),
    ("square_to_circle", "shape", ("square", "red", "white"), ("circle", "red", "white"),
     "replace the square with a circle"),
    ("circle_to_triangle", "shape", ("circle", "blue", "black"), ("triangle", "blue", "black"),
     "change the circle into a triangle"),
    ("night_background", "background", ("circle", "yellow", "skyblue"), ("circle", "yellow", "navy"), "make it night"),
    ("keep_everything", "background", ("triangle", "green", "white"), ("triangle", "green", "white"),
     "keep the image as it is"),
]  # fmt: skip


def draw_scene(shape: str, colour: str, background: str) -> Image.Image:
    """Draws one demo image: a centred shape on a plain background."""
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    box = (SIZE // 4, SIZE // 4, 3 * SIZE // 4, 3 * SIZE // 4)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(SIZE // 2, SIZE // 4), (SIZE // 4, 3 * SIZE // 4), (3 * SIZE // 4, 3 * SIZE // 4)], fill=colour)
    return image


def _caption(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def load_demo(task: Task, data_root: Path | None) -> list[Sample]:
    """Builds the demo samples in memory (``data_root`` is ignored: there is nothing to read)."""
    samples = []
    for sample_id, category, before, after, instruction in _EDITS:
        source = ImageRef.from_pil(draw_scene(*before), label=f"demo {sample_id} source")
        target = ImageRef.from_pil(draw_scene(*after), label=f"demo {sample_id} target")
        samples.append(
            Sample(
                id=sample_id,
                kind="edit",
                inputs=ModelInputs(
                    prompt=instruction,
                    source_image=source,
                    multimodal_prompt=f"{instruction} in <imagehere>",
                    placeholder_images=(source,),
                ),
                references={
                    "source_image": source,
                    "target_image": target,
                    "input_caption": _caption(*before),
                    "output_caption": _caption(*after),
                },
                metadata={"category": category},
            )
        )
    return samples
