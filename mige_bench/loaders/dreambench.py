"""DreamBench (the DreamBooth dataset): 30 subjects x 25 prompt templates = 750 subject-driven generation samples.

Layout (the ``dataset/`` folder of github.com/google/dreambooth; ``root`` may be that folder or its parent)::

    prompts_and_classes.txt     "Classes" table (subject_name,class) + object and live-subject prompt lists
    <subject>/00.jpg ...        4-6 photos per subject

Prompt templates are written ``'a {0} {1} in the jungle'`` where ``{0}`` is the unique token and ``{1}`` the class
noun. Task ``data`` arguments:

- ``reference_images``: ``{subject: file name}``, one fixed reference per subject (the Kosmos-G / MIGE zero-shot
  protocol). When given, the model sees that one image, in MIGE's multimodal prompt the ``"{0} {1}"`` is replaced
  by an image placeholder, and ``references["reference_image"]`` holds it. When absent (the DreamBooth fine-tuning
  protocol), the model is offered every photo of the subject and no multimodal prompt.
- ``unique_token``: word put in the model's plain prompt in place of ``{0}`` (default ``""``: dropped).
- ``live_classes``: class nouns of live subjects (``[dog, cat]`` gives the README's 9 live / 21 objects).
- ``github`` / ``commit``: the repository snapshot ``data fetch`` downloads.
- ``expected``: ``{subjects, images, prompts}`` counts of a complete copy.

References for metrics: ``reference_image`` (``@mige`` only), ``reference_images`` (all photos of the subject) and
``caption`` (the prompt with the class noun and without the unique token, ``"a dog in the jungle"``).
"""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders.contents import DatasetContents, expected_counts
from mige_bench.loaders.local_copy import download_url, locate_copy, read_text_file
from mige_bench.sample import IMAGE_PLACEHOLDER, ModelInputs, Sample
from mige_bench.task import Task

logger = logging.getLogger(__name__)

PROMPTS_FILE = "prompts_and_classes.txt"
DATA_KEYS = frozenset({"github", "commit", "live_classes", "unique_token", "reference_images"})
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TEMPLATE_LINE = re.compile(r"^'(?P<template>.+)'\.format\(unique_token, class_token\)")
_CLASS_ROW = re.compile(r"^(?P<subject>[A-Za-z0-9_]+),(?P<noun>[^,]+)$")
_SUBJECT_SLOT = re.compile(r"\s*\{0\}\s*\{1\}\s*")


@dataclass(frozen=True)
class PromptsAndClasses:
    """The content of ``prompts_and_classes.txt``: class noun per subject and the two template lists."""

    class_nouns: dict[str, str]
    object_templates: list[str]
    live_templates: list[str]


def parse_prompts_and_classes(text: str) -> PromptsAndClasses:
    """Parses the official ``prompts_and_classes.txt`` (sections "Classes", "Object Prompts", "Live Subject Prompts").

    Raises:
        MigeBenchError: a section is missing or empty.
    """
    class_nouns: dict[str, str] = {}
    templates: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line == "Classes":
            section = "classes"
        elif line == "Object Prompts":
            section = "object"
        elif line == "Live Subject Prompts":
            section = "live"
        elif section == "classes" and (row := _CLASS_ROW.match(line)) and row["subject"] != "subject_name":
            class_nouns[row["subject"]] = row["noun"].strip()
        elif section in templates and (match := _TEMPLATE_LINE.match(line)):
            templates[section].append(match["template"])
    if not class_nouns or not templates["object"] or not templates["live"]:
        raise MigeBenchError(
            f"{PROMPTS_FILE}: expected a Classes table and Object / Live Subject prompt lists; found "
            f"{len(class_nouns)} classes, {len(templates['object'])} object and {len(templates['live'])} live prompts."
        )
    return PromptsAndClasses(class_nouns, templates["object"], templates["live"])


def render_prompt(template: str, unique_token: str, class_noun: str) -> str:
    """Fills a template; an empty ``unique_token`` drops ``{0}`` cleanly (``"a dog in the jungle"``)."""
    if not unique_token:
        template = template.replace("{0} ", "")
    return template.format(unique_token, class_noun)


def multimodal_prompt(template: str) -> str:
    """MIGE's form: the subject slot ``"{0} {1}"`` becomes one placeholder, with no spaces around it, as in MIGE's
    released DreamBench inputs (``"a<ImageHere>in the jungle"``)."""
    return _SUBJECT_SLOT.sub(IMAGE_PLACEHOLDER, template, count=1)


def _dataset_dir(root: Path) -> Path:
    return root if (root / PROMPTS_FILE).is_file() else root / "dataset"


def is_copy(root: Path) -> bool:
    """Whether ``root`` (or its ``dataset/`` folder) holds ``prompts_and_classes.txt``."""
    return (_dataset_dir(root) / PROMPTS_FILE).is_file()


def scan(task: Task, root: Path) -> DatasetContents:
    """Reads a local copy into samples without judging completeness (see :mod:`mige_bench.loaders.contents`)."""
    folder = _dataset_dir(root)
    parsed = parse_prompts_and_classes(read_text_file(folder / PROMPTS_FILE))
    chosen = dict(task.data.get("reference_images", {}))
    unknown = sorted(set(chosen) - set(parsed.class_nouns))
    if unknown:
        raise MigeBenchError(f"{task.source_file}: reference_images names unknown subjects: {', '.join(unknown)}.")
    unlisted = sorted(set(parsed.class_nouns) - set(chosen)) if chosen else []
    if unlisted:
        # Half-listed would silently give those subjects the all-photos input mode of the other protocol.
        raise MigeBenchError(f"{task.source_file}: reference_images misses subjects: {', '.join(unlisted)}.")
    live_classes = set(task.data.get("live_classes", ["dog", "cat"]))
    samples: list[Sample] = []
    missing: list[Path] = []
    image_count = 0
    for subject, class_noun in sorted(parsed.class_nouns.items()):
        photos = sorted(path for path in (folder / subject).glob("*") if path.suffix.lower() in _IMAGE_SUFFIXES)
        if not photos:
            missing.append(folder / subject)
            continue
        image_count += len(photos)
        reference = folder / subject / chosen[subject] if subject in chosen else None
        if reference is not None and not reference.is_file():
            missing.append(reference)
            continue
        category = "live" if class_noun in live_classes else "object"
        templates = parsed.live_templates if category == "live" else parsed.object_templates
        for index, template in enumerate(templates):
            samples.append(_sample(task, subject, class_noun, category, index, template, photos, reference))
    return DatasetContents(
        location=root,
        samples=samples,
        counts={"subjects": len(parsed.class_nouns), "images": image_count, "prompts": len(samples)},
        expected=expected_counts(task),
        missing_files=tuple(missing),
    )


def _sample(
    task: Task,
    subject: str,
    class_noun: str,
    category: str,
    index: int,
    template: str,
    photos: list[Path],
    reference: Path | None,
) -> Sample:
    all_photos = tuple(ImageRef(path=path) for path in photos)
    references: dict[str, object] = {
        "reference_images": all_photos,
        "caption": render_prompt(template, "", class_noun),
    }
    prompt = render_prompt(template, str(task.data.get("unique_token", "")), class_noun)
    if reference is not None:
        reference_ref = ImageRef(path=reference)
        references["reference_image"] = reference_ref
        inputs = ModelInputs(
            prompt=prompt,
            subject_images=(reference_ref,),
            multimodal_prompt=multimodal_prompt(template),
            placeholder_images=(reference_ref,),
            subject_category=class_noun,
        )
    else:
        inputs = ModelInputs(prompt=prompt, subject_images=all_photos, subject_category=class_noun)
    return Sample(
        id=f"{subject}-{index:02d}",
        kind="subject",
        inputs=inputs,
        references=references,
        metadata={
            "subject": subject,
            "class_noun": class_noun,
            "category": category,
            "prompt_index": index,
            "template": template,
        },
    )


def locate(task: Task, data_root: Path | None) -> Path:
    """The folder of the copy to read (``data_root``, the default data folder or the Hugging Face cache)."""
    return locate_copy(task, data_root, is_copy)


def load_dreambench(task: Task, data_root: Path | None) -> list[Sample]:
    """Loads the 750 DreamBench samples from a complete local copy (see the module docstring)."""
    return scan(task, locate(task, data_root)).complete_samples(task)


def fetch(task: Task, destination: Path, progress: bool = True) -> Path:
    """Downloads the pinned snapshot of the repository and extracts its ``dataset/`` folder into
    ``destination/dataset`` (the archive download resumes if interrupted)."""
    repository, commit = task.data["github"], task.data["commit"]
    marker = destination / f".fetched-{commit}"
    if marker.is_file() and is_copy(destination):
        logger.info("%s already holds %s@%s", destination, repository, commit)
        return destination
    archive = download_url(
        f"https://codeload.github.com/{repository}/tar.gz/{commit}",
        destination / ".download" / f"{repository.replace('/', '_')}-{commit}.tar.gz",
        progress,
    )
    _extract_dataset_folder(archive, destination / "dataset")
    shutil.rmtree(archive.parent)
    marker.touch()
    return destination


def _extract_dataset_folder(archive: Path, target: Path) -> None:
    """Extracts the members under ``<top>/dataset/`` of a GitHub archive, refusing links and paths leaving
    ``target``."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 3 or parts[1] != "dataset" or not member.isfile():
                continue
            relative = Path(*parts[2:])
            if ".." in relative.parts or relative.is_absolute():
                raise MigeBenchError(f"{archive}: refusing the unsafe archive member {member.name!r}.")
            output = target / relative
            output.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, output.open("wb") as sink:  # type: ignore[union-attr]
                shutil.copyfileobj(source, sink)
