"bench/gpu_check.py at the toy shape on CPU, in each precision: the same code the GPU self-check runs, so that it never rots."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"bench"))


def run_check(tmp_path, precision, *extra):
    "Run the self-check on CPU; return (exit status, results file text, stderr)."
    env = dict(os.environ); env.setdefault("OMP_NUM_THREADS", "2")
    r = subprocess.run([sys.executable, str(ROOT/"bench"/"gpu_check.py"), "--device", "cpu", "--precision", precision,
                        "--out", str(tmp_path), "--workdir", str(tmp_path), *extra], capture_output=True, text=True, env=env, timeout=600)
    return r.returncode, (tmp_path/"gpu_check-cpu.txt").read_text(), r.stderr


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])   # fp16 is the T4 path: autocast in fp16 and a loss scaler
def test_gpu_check_passes_at_toy_shape_on_cpu(tmp_path, precision):
    rc, out, err = run_check(tmp_path, precision)
    assert rc == 0, out + err[-3000:]
    passed = {l.split()[1].rstrip(":") for l in out.splitlines() if l.strip().startswith("PASS")}
    assert passed == {"prefix_cache", "distill", "finite_logits", "generate", "mc_scoring", "resume"}, out
    assert "FAIL" not in out and "all checks passed" in out
    assert f"4-bit NF4 + LoRA r=16, computing in {precision}" in out
    assert sum(l.strip().startswith("SKIP  placement: needs 2+ CUDA devices") for l in out.splitlines()) == 1, out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])           # where a loose tolerance once let this bug through
def test_prefix_cache_catches_an_off_by_one_position(tmp_path, precision):
    rc, out, err = run_check(tmp_path, precision, "--checks", "prefix_cache", "--inject-bug", "off-by-one")
    assert rc == 1, out + err[-3000:]
    assert any(l.strip().startswith("FAIL  prefix_cache: max |cached - full|") for l in out.splitlines()), out
    assert "FAILED: toy/prefix_cache" in out


def test_degenerate_answers_are_named():
    from gpu_check import degenerate
    assert degenerate([[0, 0], [0]]) == "every token is 0"
    assert degenerate([[7, 7], [7]]) == "every token is 7"
    assert degenerate([[3], []]) == "1 empty answer(s)"
    assert degenerate([[3, 0], [5]]) is None


def test_placement_wants_every_rank_on_its_own_gpu():
    from gpu_check import placement_verdict
    rank = lambda i, params, reduced, error=None: dict(rank=i, want=f"cuda:{i}", params=params, reduced=reduced, error=error)
    assert placement_verdict([rank(0, ["cuda:0"], ["cuda:0"]), rank(1, ["cuda:1"], ["cuda:1"])])[0]
    assert not placement_verdict([rank(0, ["cuda:0"], ["cuda:0"]), rank(1, ["cuda:0"], ["cuda:1"])])[0]     # rank 1 on rank 0's GPU
    assert not placement_verdict([rank(0, ["cuda:0"], ["cpu", "cuda:0"]), rank(1, ["cuda:1"], ["cuda:1"])])[0]   # a CPU tensor all-reduced
    assert not placement_verdict([rank(0, ["cuda:0"], ["cuda:0"])])[0]                                       # a rank missing
    assert not placement_verdict([rank(0, ["cuda:0"], ["cuda:0"], "RuntimeError: x"), rank(1, ["cuda:1"], ["cuda:1"])])[0]
