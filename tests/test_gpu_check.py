"bench/gpu_check.py at the toy shape on CPU, in each precision: the same code the GPU self-check runs, so that it never rots."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])   # fp16 is the T4 path: autocast in fp16 and a loss scaler
def test_gpu_check_passes_at_toy_shape_on_cpu(tmp_path, precision):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, str(ROOT/"bench"/"gpu_check.py"), "--device", "cpu", "--precision", precision,
                        "--out", str(tmp_path), "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    out = (tmp_path/"gpu_check-cpu.txt").read_text()
    assert r.returncode == 0, out + r.stderr[-3000:]
    passed = {l.split()[1].rstrip(":") for l in out.splitlines() if l.strip().startswith("PASS")}
    assert passed == {"prefix_cache", "distill", "generate", "mc_scoring", "resume"}, out
    assert "FAIL" not in out and "all checks passed" in out
    assert f"4-bit NF4 + LoRA r=16, computing in {precision}" in out
