"Shared fixtures: a tiny random chat model saved as a local model folder, and a helper to run the CLI."
import os, subprocess, sys
from pathlib import Path
import pytest
from hypothesis import settings

# The property tests draw the same examples on every run, so that CI cannot fail on a case no change introduced;
# HYPOTHESIS_PROFILE=explore draws new ones (do that when working on the parser, the losses or the selection).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    "A tiny random Llama + character tokenizer with a chat template, saved like any hub model."
    from policyalign.testing import tiny_model, tiny_tokenizer
    d = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer()
    tiny_model(tok=tok).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d

def run_cli(*args, cwd=None, timeout=900, env=None):
    "Run `policyalign ARGS` in a subprocess; returns the CompletedProcess."
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, "-c", "import sys; from policyalign.cli import main; sys.exit(main(sys.argv[1:]))", *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)

# tiny-model settings that keep a whole CLI run to seconds
TINY_SETS = ["--preset", "cpu", "--set", "threads=1", "--set", "check.max_new_tokens=8", "--set", "synth.n_per_tactic=1", "--set", "synth.n_benign=1", "--set", "synth.max_new_tokens=24",
             "--set", 'synth.tactics=["direct", "roleplay"]', "--set", "filter.max_new_tokens=8", "--set", "distill.steps=4",
             "--set", "distill.batch_size=4", "--set", "distill.max_new_tokens=8", "--set", "distill.checkpoint_every=2",
             "--set", "eval.limit=4", "--set", "eval.mmlu_limit=4", "--set", "eval.max_new_tokens=8", "--set", "eval.n_boot=100"]
