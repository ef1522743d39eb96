"""`policyalign run` under torchrun: two gloo processes on CPU end with one run folder, identical to a single process's
(timings aside). The first process owns the folder and runs the check, synthesis, filtering and evaluation; both take
part in distillation, each with a contiguous half of every step's requests (micro_batch_size = that half)."""
import os, shutil, subprocess, sys
import pytest
from conftest import run_cli, run_folder, changed_files, TINY_SETS

PAIR = ["--set", "distill.micro_batch_size=2"]    # each of two processes takes 2 of the 4 requests of a step

@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun (installed with torch) is not on PATH")
def test_two_processes_under_torchrun_make_the_single_process_run_folder(tiny_model_dir, tmp_path):
    env = dict(POLICYALIGN_CACHE=str(tmp_path/"cache"))
    one = run_cli("run", "--model", tiny_model_dir, "--out", tmp_path/"one", *TINY_SETS, *PAIR, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **env}
    two = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", shutil.which("policyalign"), "run", "--model", str(tiny_model_dir),
                          "--out", str(tmp_path/"two"), *TINY_SETS, *PAIR], env=e, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report: ") == 1                  # one process speaks for the run
    assert changed_files(run_folder(tmp_path/"two"), run_folder(tmp_path/"one")) == []
    assert "**distill**" in (tmp_path/"two"/"report.md").read_text()

def test_a_failure_on_the_first_process_stops_the_others(tiny_model_dir, tmp_path):
    "A policy file that does not exist fails on both processes at once, with the two-line error, instead of a hang."
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "POLICYALIGN_CACHE": str(tmp_path/"cache")}
    r = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", shutil.which("policyalign"), "run", "--model", str(tiny_model_dir),
                        "--out", str(tmp_path/"x"), "--preset", "cpu", "--set", "check.stop_if_nothing=true", *TINY_SETS[2:]],
                       env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "nothing to distil" in r.stderr, r.stderr[-3000:]
