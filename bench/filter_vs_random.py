"""Does Policy-Sensitive Filtering make distillation more data-efficient? (issue 4)

Scores a candidate pool of AdvBench requests with the PSF score, then trains the same number of steps from the
same initial adapter on (a) the most policy-sensitive requests and (b) a random subset of the same size, and prints
the held-out policy KL (full-vocabulary KL(student || frozen teacher with the policy), on requests neither run
trained on) before and after both, for `--seeds` independent draws of the pool, the held-out requests and the random
subset; then the mean and spread over seeds. A benchmark, not a test: it prints figures and writes
bench/results/filter_vs_random.txt. Last line: `ratio kl_drop_psf/random=<x>` (mean held-out KL drop, PSF over random).

    python bench/filter_vs_random.py                      # the embedded SmolLM2-135M on CPU, 3 seeds, about 30 minutes on 2 cores
    python bench/filter_vs_random.py --device cuda --model Qwen/Qwen2.5-1.5B-Instruct --steps 40 --pool 512
"""
import argparse, os, random, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_output_arguments, begin, finish, shape_model_dir


def one_seed(a, seed, pol, model, tok, init):
    "Score a pool drawn with `seed`, train on the PSF top and on a random subset from the same adapter; held-out KL changes (%)."
    import numpy as np
    from peft import set_peft_model_state_dict
    from policyalign.seeds import import_seeds
    from policyalign.suites import data_root
    from policyalign.filtering import FilterConfig, score_requests
    from policyalign.distill import DistillConfig, distill
    from policyalign.measure import policy_kl
    rows = import_seeds(data_root()/"advbench"/"harmful_behaviors.csv", pol, column="goal")
    rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]    # the order datasets' shuffle(seed) gives
    pool,held = [r["request"] for r in rows[:a.pool]],[r["request"] for r in rows[a.pool:a.pool + a.heldout]]
    set_peft_model_state_dict(model, init)
    scores = score_requests(model, tok, pol, pool, FilterConfig(max_new_tokens=a.max_new_tokens, reuse_scores=False, seed=seed, batch_size=16), progress=False)
    ranked = [r["request"] for r in sorted(scores, key=lambda r: -r["kl"])]
    subsets = {"PSF top": ranked[:a.subset], "random": random.Random(seed + 1).sample(pool, a.subset)}
    kl = lambda: statistics.fmean(policy_kl(model, tok, pol, held, a.max_new_tokens, samples=2, seed=4321))
    before,mean_score = kl(),lambda sub: statistics.fmean(r["kl"] for r in scores if r["request"] in subsets[sub])
    print(f"seed {seed}: pool {len(pool)}, mean PSF score {statistics.fmean(r['kl'] for r in scores):.4f} (PSF subset "
          f"{mean_score('PSF top'):.4f}, random subset {mean_score('random'):.4f}); held-out KL before {before:.4f} ({len(held)} requests)")
    cfg = DistillConfig.tiny(steps=a.steps, lr=a.lr, divergence=a.divergence, max_new_tokens=a.max_new_tokens, seed=seed)
    change = {}
    for name,reqs in subsets.items():
        set_peft_model_state_dict(model, init)                      # the same starting adapter for both
        h = distill(model, tok, pol, reqs, cfg, progress=False).history
        after = kl()
        change[name] = 100 * (after - before) / before
        print(f"  {name:8s}: train loss {h[0]['loss']:.4f} -> {h[-1]['loss']:.4f}; held-out KL {before:.4f} -> {after:.4f} ({change[name]:+.1f}%)", flush=True)
    return change


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m"); ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--policy", default="general"); ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--subset", type=int, default=16); ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--divergence", default="topk_tail_reverse_kl"); ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3, help="independent repeats: pool, held-out requests, sampling and random subset")
    add_output_arguments(ap, "filter_vs_random")
    a = ap.parse_args()
    if a.toy: a.model, a.pool, a.subset, a.heldout, a.steps, a.max_new_tokens, a.seeds = shape_model_dir("toy"), 4, 2, 2, 1, 4, 1
    begin("cuda" if a.device == "cuda" else "cpu")
    from peft import get_peft_model_state_dict
    from policyalign.models import ModelConfig, load_model
    from policyalign.policy import load_policy
    t0 = time.time()
    pol = load_policy(a.policy)
    model,tok = load_model(ModelConfig(a.model, device=a.device))
    init = {k: v.clone() for k,v in get_peft_model_state_dict(model).items()}
    changes = [one_seed(a, seed, pol, model, tok, init) for seed in range(a.seeds)]
    for name in ("PSF top", "random"):
        xs = [c[name] for c in changes]
        print(f"{name:8s}: held-out KL change over {len(xs)} seed(s): mean {statistics.fmean(xs):+.1f}%, "
              f"spread {min(xs):+.1f}% to {max(xs):+.1f}%" + (f", sd {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""))
    wins = sum(c["PSF top"] < c["random"] for c in changes)
    print(f"PSF lowered the held-out KL more than random in {wins} of {len(changes)} seed(s); total {time.time()-t0:.0f} s")
    drop = lambda name: -statistics.fmean(c[name] for c in changes)
    finish(a, "filter_vs_random", f"kl_drop_psf/random={drop('PSF top') / drop('random'):.3f}" if drop("random") > 0 else
           f"kl_drop_psf/random=n/a (random subset did not lower the KL: {-drop('random'):+.1f}%)")

if __name__ == "__main__":
    main()
