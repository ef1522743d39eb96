"""Installing policyalign where a newer torch is already installed (Colab) keeps that torch: a pip dry run in a fresh venv
holding a stand-in torch 2.15.0+cu130. It resolves every dependency against the package index (about two minutes), so it
runs only with POLICYALIGN_NETWORK_TESTS=1; the outcome is in the closing note of the issue that added it."""
import json, os, subprocess, sys, venv
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.environ.get("POLICYALIGN_NETWORK_TESTS") != "1",
                                reason="resolves dependencies against the package index: set POLICYALIGN_NETWORK_TESTS=1")

def test_an_installed_newer_torch_is_kept(tmp_path):
    venv.create(tmp_path/"venv", with_pip=True)
    py = str(tmp_path/"venv"/"bin"/"python")
    fake = tmp_path/"faketorch"; (fake/"torch").mkdir(parents=True)
    (fake/"torch"/"__init__.py").write_text("__version__ = '2.15.0'\n")
    (fake/"pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
                                       '[project]\nname = "torch"\nversion = "2.15.0+cu130"\n')
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}     # no machine-wide constraints: a user's plain pip
    subprocess.run([py, "-m", "pip", "install", "-q", str(fake)], check=True, env=env)
    report = tmp_path/"report.json"
    subprocess.run([py, "-m", "pip", "install", "--dry-run", "-q", "--report", str(report), "-e", str(ROOT)], check=True, env=env)
    planned = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert "torch" not in planned and not any(n.startswith("nvidia") for n in planned), sorted(planned)
