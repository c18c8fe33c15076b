"""The contributor tooling: the hosted-CI workflow runs .ci/run, the pre-commit hooks run offline and catch what
they say they catch (notebook outputs, large files), and .ci/run runs them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "test.yml"
PRE_COMMIT = REPO_ROOT / ".pre-commit-config.yaml"


def hooks() -> dict[str, dict]:
    config = yaml.safe_load(PRE_COMMIT.read_text())
    return {hook["id"]: {**hook, "repo": repo["repo"]} for repo in config["repos"] for hook in repo["hooks"]}


def test_the_workflow_runs_ci_run_on_push_and_pull_requests_for_python_3_10_to_3_12():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12"]
    assert job["runs-on"].startswith("ubuntu")  # CPU: no GPU runner
    setup = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python")]
    assert setup and setup[0]["with"]["python-version"] == "${{ matrix.python-version }}"
    assert [s["run"].strip() for s in job["steps"] if "run" in s] == [".ci/run"]
    assert (REPO_ROOT / ".ci" / "run").stat().st_mode & 0o111  # executable, as the step calls it


def test_every_hook_is_local_and_its_command_is_installed():
    """Nothing is cloned from GitHub (CI and contributors offline); the tools come from the [dev] extra."""
    found = hooks()
    assert {"ruff-check", "ruff-format", "end-of-file-fixer", "trailing-whitespace", "check-added-large-files"} <= set(
        found
    )
    assert {hook["repo"] for hook in found.values()} == {"local"}
    for hook in found.values():
        if hook["language"] == "system":
            command = hook["entry"].split()[0]
            assert shutil.which(command), f"hook {hook['id']}: {command} is not installed (pip install -e '.[dev]')"
    dev = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"ruff==' in dev and '"pre-commit>=' in dev and '"pre-commit-hooks>=' in dev


def notebook(tmp_path: Path, name: str, outputs: list, count: int | None) -> Path:
    cell = {"cell_type": "code", "execution_count": count, "metadata": {}, "outputs": outputs, "source": ["1 + 1"]}
    path = tmp_path / name
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1))
    return path


def test_the_notebook_hook_refuses_outputs_and_passes_a_cleared_notebook(tmp_path):
    pygrep = pytest.importorskip("pre_commit.languages.pygrep")
    hook = hooks()["notebook-outputs"]
    assert hook["language"] == "pygrep" and re.search(hook["files"], "docs/tour.ipynb")

    def flagged(path: Path) -> bool:
        return pygrep.main([*hook["args"], hook["entry"], str(path)]) != 0

    result = [{"output_type": "execute_result", "data": {"text/plain": ["2"]}, "execution_count": 1, "metadata": {}}]
    assert flagged(notebook(tmp_path, "ran.ipynb", result, 1))
    assert flagged(notebook(tmp_path, "count_only.ipynb", [], 3))
    assert not flagged(notebook(tmp_path, "cleared.ipynb", [], None))


def test_the_large_file_hook_checks_every_tracked_file_and_ci_runs_the_hooks():
    hook = hooks()["check-added-large-files"]
    assert "--enforce-all" in hook["args"]  # with --all-files (CI) every file is checked, not only staged ones
    assert any(arg.startswith("--maxkb=") for arg in hook["args"])
    assert "pre-commit run --all-files" in (REPO_ROOT / ".ci" / "run").read_text()
