"""Distillation is data-parallel under `accelerate launch`: two CPU processes train one adapter in lockstep.
(`--multi_gpu` with no GPU starts the processes through torchrun; policyalign joins them with the gloo backend.)"""
import json, os, shutil, subprocess, sys, textwrap
import pytest

SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from policyalign.testing import tiny_model, tiny_tokenizer, tiny_policy, tiny_prompts
    from policyalign.models import add_lora
    from policyalign.distill import DistillConfig, distill, trainable_params
    from policyalign.parallel import rank as _rank
    torch.manual_seed(0)
    tok = tiny_tokenizer(); m = add_lora(tiny_model(tok=tok))
    w0 = torch.cat([p.detach().flatten().clone() for p in trainable_params(m)])
    res = distill(m, tok, tiny_policy(), tiny_prompts(), DistillConfig.tiny(steps=3, batch_size=4, micro_batch_size=2, max_new_tokens=6), progress=False)
    w = torch.cat([p.detach().flatten() for p in trainable_params(m)])
    import torch.distributed as dist
    out = dict(rank=_rank(), world=dist.get_world_size() if dist.is_initialized() else 1, moved=float((w - w0).abs().sum()),
               checksum=float(w.double().sum()), losses=[h["loss"] for h in res.history])
    with open(f"{sys.argv[1]}/result-{_rank()}.json", "w") as f: json.dump(out, f)   # one file per rank: no interleaved stdout
''')

@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not installed")
def test_two_cpu_processes_train_the_same_adapter(tmp_path):
    (tmp_path/"train.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", str(tmp_path/"train.py"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path/f"result-{i}.json").read_text()) for i in (0, 1)]
    assert sorted(x["rank"] for x in res) == [0, 1] and all(x["world"] == 2 for x in res)
    assert all(x["moved"] > 0 for x in res)
    assert res[0]["checksum"] == res[1]["checksum"]          # gradients were averaged: the replicas agree exactly
    assert res[0]["losses"] == res[1]["losses"]              # and both report the global token-mean loss
