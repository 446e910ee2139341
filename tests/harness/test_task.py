"""Task YAML validation: typos and wrong types are refused with the file and key named."""

from __future__ import annotations

import pytest
import yaml

from mige_bench.errors import MigeBenchError
from mige_bench.task import available_tasks, get_task, load_task_file

VALID = {
    "name": "toy",
    "protocol": "unit",
    "version": 1,
    "kind": "edit",
    "loader": "demo",
    "primary_metric": "l1",
    "metrics": {"l1": {"against": "target_image"}, "dino_entity": {"metric": "dino", "against": "target_image"}},
}


def _write(tmp_path, document) -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_valid_task_loads_with_metric_aliases(tmp_path):
    task = load_task_file(_write(tmp_path, VALID))
    assert task.id == "toy@unit"
    assert task.metrics["dino_entity"].metric == "dino"
    assert dict(task.metrics["l1"].args) == {"against": "target_image"}
    assert task.definition()["id"] == "toy@unit"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"verison": 2}, "unknown key 'verison' in the task (did you mean 'version'?)"),
        ({"version": "one"}, "key 'version' must be of type int"),
        ({"version": True}, "key 'version' must be of type int"),
        ({"kind": "inpaint"}, "'kind' must be one of subject, edit, subject_edit"),
        ({"loader": "nope"}, "unknown loader 'nope'"),
        ({"metrics": {"dnio": {}}}, "unknown metric 'dnio' (did you mean 'dino'?)"),
        ({"primary_metric": "clip_t"}, "'primary_metric' 'clip_t' is not one of the task's metrics"),
        ({"images_per_sample": 0}, "'images_per_sample' must be at least 1"),
        # data keys are the loader's: a typo would otherwise be ignored and silently change what is loaded
        ({"loader": "dreambench", "data": {"unique_tokn": "sks"}}, "unknown key 'unique_tokn' in data (did you mean"),
        ({"loader": "magicbrush", "data": {"hf_split": "dev"}}, "unknown key 'hf_split' in data"),
    ],
)
def test_invalid_tasks_are_refused_with_file_and_key(tmp_path, change, message):
    path = _write(tmp_path, {**VALID, **change})
    with pytest.raises(MigeBenchError) as error:
        load_task_file(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_version_is_refused(tmp_path):
    document = {key: value for key, value in VALID.items() if key != "version"}
    with pytest.raises(MigeBenchError, match="missing required key 'version'"):
        load_task_file(_write(tmp_path, document))


def test_yaml_with_python_tags_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(MigeBenchError, match="not valid YAML"):
        load_task_file(path)


def test_every_bundled_task_loads_and_ids_are_unique():
    tasks = available_tasks()
    assert "demo@smoke" in tasks
    for task_id, task in tasks.items():
        assert task.id == task_id
        assert task.version >= 1


def test_task_lookup_by_name_and_typo_suggestion():
    assert get_task("demo").id == "demo@smoke"
    with pytest.raises(MigeBenchError, match="Did you mean 'demo@smoke'"):
        get_task("demo@smok")
