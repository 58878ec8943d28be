"""Installed as a package (not cloned): one import name, the shipped specs, `init` and a
shipped spec named without a path, in a fresh virtual environment."""

from __future__ import annotations

import os
import subprocess
import venv

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install .` (not editable) into a fresh venv that sees this one's dependencies."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, system_site_packages=True, with_pip=True)
    python = folder / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def in_empty_folder(installed, tmp_path, *command, timeout=600):
    env = {**os.environ, "CODECLM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": ""}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_only_one_distinctive_name_is_installed(installed, tmp_path):
    python = str(installed / "bin" / "python")
    for generic in ("cli", "programs"):
        done = in_empty_folder(installed, tmp_path, python, "-c", f"import {generic}")
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, generic
    done = in_empty_folder(installed, tmp_path, python, "-c",
                           "import codeclm, codeclm.programs.models.hub as hub; print(hub.__file__)")
    assert done.returncode == 0 and str(installed) in done.stdout, done.stderr  # the installed copy, not the clone


def test_init_and_a_shipped_spec_work_from_an_empty_folder(installed, tmp_path):
    codeclm = str(installed / "bin" / "codeclm")
    small = ["--limit", "2", "--set", "params.pool_size=1", "--set", "params.dataset_size=1",
             "--set", "params.max_iterations=1", "-q"]
    done = in_empty_folder(installed, tmp_path, codeclm, "init")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "specs" / "demo.yaml").is_file() and (tmp_path / "prompts").is_dir()
    assert "## Expressions" in (tmp_path / "docs" / "spec.md").read_text()  # the reference the help points to
    done = in_empty_folder(installed, tmp_path, codeclm, "run", "specs/demo.yaml", "--out", "runs/mine", *small)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr  # 1: no pair kept
    assert (tmp_path / "runs" / "mine" / "manifest.json").is_file()
    done = in_empty_folder(installed, tmp_path, codeclm, "run", "demo", "--out", "runs/shipped", *small)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "runs" / "shipped" / "manifest.json").is_file()
