"""Does Policy-Sensitive Filtering make distillation more data-efficient? (issue 4)

Scores a candidate pool of AdvBench requests with the PSF score, then trains the same number of steps from the
same initial adapter on (a) the most policy-sensitive requests and (b) a random subset of the same size, and prints
the held-out policy KL (full-vocabulary KL(student || frozen teacher with the policy), on requests neither run
trained on) before and after both. A benchmark, not a test: it prints figures.

    python bench/filter_vs_random.py                      # the embedded SmolLM2-135M on CPU, a few minutes
    python bench/filter_vs_random.py --device cuda --model Qwen/Qwen2.5-1.5B-Instruct --steps 40 --pool 512
"""
import argparse, random, time
import torch

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m"); ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--policy", default="general"); ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--subset", type=int, default=16); ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--divergence", default="topk_tail_reverse_kl"); ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from policyalign.models import ModelConfig, load_model
    from policyalign.policy import load_policy
    import numpy as np
    from policyalign.seeds import import_seeds
    from policyalign.suites import data_root
    from policyalign.filtering import FilterConfig, score_requests
    from policyalign.distill import DistillConfig, distill, heldout_policy_kl
    t0 = time.time()
    pol = load_policy(a.policy)
    rows = import_seeds(data_root()/"advbench"/"harmful_behaviors.csv", pol, column="goal")
    rows = [rows[i] for i in np.random.default_rng(a.seed).permutation(len(rows))]    # the order datasets' shuffle(seed) gives
    pool,held = [r["request"] for r in rows[:a.pool]],[r["request"] for r in rows[a.pool:a.pool + a.heldout]]
    model,tok = load_model(ModelConfig(a.model, device=a.device))
    init = {k: v.clone() for k,v in get_peft_model_state_dict(model).items()}
    fc = FilterConfig(max_new_tokens=a.max_new_tokens, reuse_scores=False, seed=a.seed, batch_size=16)
    scores = score_requests(model, tok, pol, pool, fc, progress=False)
    ranked = [r["request"] for r in sorted(scores, key=lambda r: -r["kl"])]
    subsets = {"PSF top": ranked[:a.subset], "random": random.Random(a.seed + 1).sample(pool, a.subset)}
    kl = lambda: heldout_policy_kl(model, tok, pol, held, a.max_new_tokens, samples=2, seed=4321)
    before = kl()
    print(f"pool {len(pool)}: mean PSF score {sum(r['kl'] for r in scores)/len(scores):.4f}; PSF subset mean "
          f"{sum(r['kl'] for r in scores if r['request'] in subsets['PSF top'])/a.subset:.4f}; random subset mean "
          f"{sum(r['kl'] for r in scores if r['request'] in subsets['random'])/a.subset:.4f}")
    print(f"held-out policy KL before training: {before:.4f}  ({len(held)} requests, full vocabulary, 2 samples each)")
    cfg = DistillConfig.tiny(steps=a.steps, lr=a.lr, divergence=a.divergence, max_new_tokens=a.max_new_tokens, seed=a.seed)
    for name,reqs in subsets.items():
        set_peft_model_state_dict(model, init)                      # the same starting adapter for both
        h = distill(model, tok, pol, reqs, cfg, progress=False).history
        after = kl()
        print(f"{name:8s}: train loss {h[0]['loss']:.4f} -> {h[-1]['loss']:.4f}; held-out KL {before:.4f} -> {after:.4f} "
              f"({100*(after-before)/before:+.1f}%)")
    print(f"total {time.time()-t0:.0f} s on {a.device} ({torch.get_num_threads()} threads)")

if __name__ == "__main__":
    main()
