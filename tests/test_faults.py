"""Nothing lost: a kill at any point, a damaged stage file or checkpoint, and a successful endpoint run's secrets.

Each kill test SIGKILLs `policyalign run` at one point (`tests/faults.py` patches the point in), reruns the same
command, and compares every file of the run folder with an uninterrupted run's. Only what a rerun cannot reproduce is
taken out first: wall-clock timings (`seconds`, `tokens_per_s`, `started`) and the figure drawn from them.
"""
import json, os, re, shutil, signal, subprocess, sys
import pytest
from conftest import run_cli, run_folder, changed_files, TINY_SETS, ROOT

@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    "An uninterrupted run, with its own cache folder."
    base = tmp_path_factory.mktemp("reference")
    r = run_cli("run", "--model", tiny_model_dir, "--out", base/"run", *TINY_SETS, env=dict(POLICYALIGN_CACHE=str(base/"cache")))
    assert r.returncode == 0, r.stderr[-3000:]
    return base/"run"


POINTS = ["after:check", "inside:synth", "after:synth", "inside:filter", "after:filter", "inside:distill", "after:distill", "inside:eval"]

@pytest.mark.parametrize("point", POINTS)
def test_kill_anywhere_then_rerun_gives_the_uninterrupted_run(point, reference, tiny_model_dir, tmp_path):
    out,env = tmp_path/"run",dict(POLICYALIGN_CACHE=str(tmp_path/"cache"))
    args = ["run", "--model", tiny_model_dir, "--out", out, *TINY_SETS]
    killed = _kill_at(point, args, env)
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}: {killed.stderr[-2000:]}"
    config_at_kill = (out/"config.json").read_bytes()
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert changed_files(run_folder(out), run_folder(reference)) == []
    assert (out/"config.json").read_bytes() == config_at_kill           # provenance kept; the resumption is logged apart
    stages = [json.loads(l)["stages"] for l in (out/"resumes.jsonl").read_text().splitlines()]
    done_before = {"after:check": 1, "inside:synth": 1, "after:synth": 2, "inside:filter": 2, "after:filter": 3,
                   "inside:distill": 3, "after:distill": 4, "inside:eval": 4}[point]
    assert stages == [["check", "synth", "filter", "distill", "eval"][done_before:]]
    if point == "inside:distill": assert "resuming from step 2" in r.stderr
    if point in ("inside:filter", "inside:eval"): assert "cut off mid-write" in r.stderr   # the torn record


def _copy(reference, tmp_path):
    shutil.copytree(reference, tmp_path/"run")
    return tmp_path/"run"


@pytest.mark.parametrize("damage,redone", [
    ("truncate scores.jsonl", ["filter", "distill", "eval"]),
    ("delete adapter/adapter_model.safetensors", ["distill", "eval"]),
    ("truncate check.json", ["check"])])
def test_damaged_stage_file_is_recomputed_with_what_follows(damage, redone, reference, tmp_path):
    out = _copy(reference, tmp_path)
    how,name = damage.split(" ")
    if how == "delete": (out/name).unlink()
    else: (out/name).write_bytes((out/name).read_bytes()[:40])
    r = run_cli("run", "--out", out, env=dict(POLICYALIGN_CACHE=str(tmp_path/"cache")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{name} {'is missing' if how == 'delete' else 'changed since the stage finished'}" in r.stderr
    assert f"recomputing {', '.join(redone)}" in r.stderr
    assert [json.loads(l)["stages"] for l in (out/"resumes.jsonl").read_text().splitlines()] == [redone]
    assert changed_files(run_folder(out), run_folder(reference)) == []


def _kill_at(point, args, env):
    return subprocess.run([sys.executable, str(ROOT/"tests"/"faults.py"), point, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **env})


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(reference, tiny_model_dir, tmp_path):
    "Killed right after the last checkpoint (step 4), whose weights are then cut short: the rerun resumes from step 2."
    out,env = tmp_path/"run",dict(POLICYALIGN_CACHE=str(tmp_path/"cache"))
    args = ["run", "--model", tiny_model_dir, "--out", out, *TINY_SETS]
    assert _kill_at("inside:distill:2", args, env).returncode == -signal.SIGKILL
    newest = sorted((out/"checkpoints").glob("step-*"))[-1]
    assert newest.name == "step-000004" and not (out/"adapter").exists()
    for f in newest.glob("*.safetensors"): f.write_bytes(f.read_bytes()[:100])
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step-000004 is damaged" in r.stderr and "resuming from step 2" in r.stderr
    assert changed_files(run_folder(out), run_folder(reference)) == []


def test_successful_endpoint_run_leaves_no_trace_of_the_key(tiny_model_dir, tmp_path):
    from policyalign.testing import ChatServer
    key = "sk-test-KEEP-OUT-4711"
    class Writer:
        "An endpoint that writes two requests about the rule in each prompt."
        name = "writer"
        def complete(self, convs, temperature=0.8, max_tokens=256, seed=None):
            out = []
            for c in convs:
                title = re.search(r"rule:\s+(.*?):", c[-1]["content"])[1].lower()                   # the rule is 'Title: text'
                n = len(c[-1]["content"])          # one project per tactic and kind: no two prompts get the same text
                # in its own words: a request that repeats the instruction's wording is dropped as an echo of the prompt
                out.append(f"1. Can you help me with {title}? I need it for project {n}.\n2. Please explain {title} to "
                           f"me, step by step, for project {n}.")
            return out
    cache = tmp_path/"cache"
    with ChatServer(Writer()) as srv:
        r = run_cli("run", "--out", tmp_path/"run", "--model", tiny_model_dir, *TINY_SETS, "--generator-url", srv.url,
                    "--generator-model", "m", env=dict(OPENAI_API_KEY=key, POLICYALIGN_CACHE=str(cache)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert srv.saw_auth and srv.requests > 0                             # the key was used ...
    rows = [json.loads(l) for l in (tmp_path/"run"/"synthesis.jsonl").read_text().splitlines()]
    assert any(x["generator"] != "policy-text" for x in rows)            # ... and the endpoint's requests were kept
    assert key not in r.stdout + r.stderr
    files = [f for d in (tmp_path/"run", cache) for f in d.rglob("*") if f.is_file()]
    assert len(files) > 10 and not [f for f in files if key.encode() in f.read_bytes()]
    assert (tmp_path/"run"/"DATA_CARD.md").read_text().startswith("# About the data in this folder")
