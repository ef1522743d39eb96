"Shared fixtures: a tiny random chat model saved as a local model folder, a helper to run the CLI, and run-folder comparison."
import json, os, re, subprocess, sys
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


# What two runs of the same settings must share: every file, but for wall-clock timings
TIMINGS = {"seconds", "tokens_per_s", "started"}
NOT_COMPARED = {".lock", "resumes.jsonl"}   # the lock is gone after a run; only a resumed run has resumes.jsonl

def _untimed(x):
    if isinstance(x, dict): return {k: _untimed(v) for k,v in x.items() if k not in TIMINGS}
    if isinstance(x, list): return [_untimed(v) for v in x]
    return x

def _content(path):
    "What a rerun must reproduce of one file: JSON without timings, the report without its seconds, other files' bytes."
    if path.name == "stages.json":   # the files are compared themselves; metrics.jsonl's checksum covers its timings
        return {k: {f: v for f,v in x.items() if f != "checksums"} for k,x in _untimed(json.loads(path.read_text())).items()}
    if path.suffix == ".json": return _untimed(json.loads(path.read_text()))
    if path.suffix == ".jsonl": return [_untimed(json.loads(l)) for l in path.read_text().splitlines()]
    if path.name == "report.md": return re.sub(r"seconds = [\d.]+", "seconds", path.read_text())
    return path.read_bytes()

def run_folder(out) -> dict:
    return {p.relative_to(out).as_posix(): _content(p) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in NOT_COMPARED and p.name != "training.png"}   # training.png plots tokens/s

def changed_files(a:dict, b:dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))

