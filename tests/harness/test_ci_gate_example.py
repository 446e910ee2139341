"""The example regression-gate workflow: its shell steps run as written, on the demo task, with this checkout's CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "github-actions-regression-gate.yml"


def _steps() -> dict[str, dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return {step["name"]: step for step in workflow["jobs"]["gate"]["steps"] if "name" in step}


def _bash(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def gate_env(tmp_path) -> dict[str, str]:
    """The job's environment (inputs as variables) for the demo task and a test generator that takes no arguments."""
    return {
        **os.environ,
        "TASK": "demo@smoke",
        "MODEL": "tests.harness.test_runner:NoiseGenerator",
        "BASE_ARGS": "",
        "NEW_ARGS": "",
        "LIMIT": "4",
        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "PYTHONPATH": str(WORKFLOW.parents[1]),  # the test plug-in's module
    }


def test_the_baseline_cache_key_has_no_comma_and_changes_with_the_baseline_arguments(tmp_path, gate_env):
    names = _steps()["Folder name and baseline key"]["run"]
    keys = []
    for args in ("preset=instruct-pix2pix,dtype=bf16", "preset=instruct-pix2pix,dtype=fp32"):
        Path(gate_env["GITHUB_OUTPUT"]).unlink(missing_ok=True)
        result = _bash(names, {**gate_env, "BASE_ARGS": args}, tmp_path)
        assert result.returncode == 0, result.stderr
        outputs = dict(line.split("=", 1) for line in Path(gate_env["GITHUB_OUTPUT"]).read_text().splitlines())
        assert outputs["slug"] == "demo@smoke"
        assert re.fullmatch(r"[0-9a-f]{16}", outputs["base"])
        keys.append(outputs["base"])
    assert keys[0] != keys[1]
    restore = _steps()["Restore baseline run"]["with"]["key"]
    assert "inputs." not in restore  # raw inputs (with their commas) never reach the key


def test_the_gate_steps_run_as_written_and_pass_an_identical_candidate(tmp_path, gate_env):
    steps = _steps()
    cli_dir = str(Path(sys.executable).parent) + "/"
    scripts = []
    for name in ("Baseline checkpoint", "Candidate checkpoint", "Compare (the gate)"):
        script = steps[name]["run"].replace("${{ steps.names.outputs.slug }}", "demo@smoke")
        script = script.replace("${{ matrix.tolerances }}", "--tolerance l1=0.01").replace("--device cuda", "")
        assert "${{" not in script, f"{name}: unreplaced expression in {script!r}"
        scripts.append(script.replace(".venv/bin/", cli_dir))
    for script in scripts:
        result = _bash(script, gate_env, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in Path(gate_env["GITHUB_STEP_SUMMARY"]).read_text()
    assert (tmp_path / "runs" / "base" / "demo@smoke" / "results.json").is_file()
