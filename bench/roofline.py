"""How close a distillation step comes to this machine's dense matmul throughput.

1. Peak: the best of `--repeats` timings of a dense float32 (bf16 on CUDA) square matmul, for several sizes, in GFLOP/s
   (a matmul of two n x n matrices is 2 n^3 FLOP).
2. Achieved: `policyalign.distill.distill_step` on 8 requests with `--answer-tokens` answer tokens, FLOP counted from
   the base model's parameter count P (tied embedding counted once; LoRA's share ignored) and the real (unpadded)
   token counts of the step:

       rollout  2 P (student prompt tokens + generated tokens)       the student samples the answers
       teacher  2 P (teacher tokens it runs)                          forward only; with a working prefix cache only
                                                                      request + answer tokens, else the whole prompt
       student  6 P (student prompt tokens + answer tokens)           forward + backward (the usual 6P; with a frozen
                                                                      base the weight-gradient matmuls are skipped,
                                                                      so 4P is closer to the work done: also printed)

   achieved FLOP/s = total FLOP / median step seconds; printed as a fraction of the best matmul GFLOP/s.
Last line: `fraction_of_peak=<x>`. Run: `python bench/roofline.py [--device cuda] [--answer-tokens 32] [--steps 2]`.
"""
from __future__ import annotations
import argparse, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, load, add_shape_argument, load_bench_model, median, setup, sync


def matmul_peak(device, sizes, repeats):
    import torch
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    best = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
        a @ b; sync(device)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter(); a @ b; sync(device); ts.append(time.perf_counter() - t0)
        best[n] = 2 * n ** 3 / min(ts) / 1e9
        print(f"matmul {n}x{n} ({dt}): best of {repeats} = {best[n]:.1f} GFLOP/s  load {load()}", flush=True)
    return max(best.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_shape_argument(ap)
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="measured distill steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-prefix-cache", action="store_true")
    args = ap.parse_args()
    print(f"machine: {setup(args.device, args.threads)}; load average at start: {load()}")
    peak = matmul_peak(args.device, [int(s) for s in args.sizes.split(",")], args.repeats)

    from policyalign.distill import DistillConfig, distill_step, make_optimizer
    from policyalign.policy import Prompter, load_policy
    from policyalign.rollout import PolicyPrefix
    model, tok = load_bench_model(args.device, shape=args.shape)
    P = sum(p.numel() for n, p in model.get_base_model().named_parameters() if "lora_" not in n)
    pr = Prompter(tok, load_policy("general"))
    cfg = DistillConfig(steps=10_000, batch_size=8, micro_batch_size=8, rollout_batch_size=8, max_new_tokens=args.answer_tokens,
                         min_new_tokens=args.answer_tokens)
    opt, sched = make_optimizer(model, cfg)
    prefix = None if args.no_prefix_cache else PolicyPrefix(pr)
    s_p, t_p = [pr.student(r) for r in REQUESTS], [pr.teacher(r) for r in REQUESTS]
    cached = prefix is not None and prefix.matches(t_p)
    secs, answer = [], 0
    for i in range(1 + args.steps):
        sync(args.device)
        m = distill_step(model, tok, pr, REQUESTS, cfg, opt, sched, i, prefix)
        print(f"{'warm-up' if i == 0 else 'step'} {i}: {m['seconds']:.2f} s, {m['answer_tokens']:.0f} answer tokens/request  load {load()}", flush=True)
        if i: secs.append(m["seconds"]); answer = m["answer_tokens"] * len(REQUESTS)
    sp, tp = sum(map(len, s_p)), sum(map(len, t_p)) - (len(prefix) * len(t_p) if cached else 0)
    flop = dict(rollout=2 * P * (sp + answer), teacher=2 * P * (tp + answer), student=6 * P * (sp + answer))
    total, dt = sum(flop.values()), median(secs)
    print(f"P = {P / 1e6:.1f} M base parameters; tokens per step: student prompts {sp}, teacher tokens run {tp} "
          f"(prefix cache {'applies' if cached else 'does not apply'}), answers {answer:.0f}")
    for k, v in flop.items(): print(f"  {k:8s} {v / 1e12:6.3f} TFLOP")
    achieved = total / dt / 1e9
    alt = (total - 2 * P * (sp + answer)) / dt / 1e9
    print(f"step {dt:.2f} s (median of {len(secs)}): {total / 1e12:.3f} TFLOP -> {achieved:.1f} GFLOP/s achieved; "
          f"best matmul {peak:.1f} GFLOP/s; with 4P for the student: {alt:.1f} GFLOP/s ({alt / peak:.2f} of peak)")
    print(f"load average at end: {load()}")
    print(f"fraction_of_peak={achieved / peak:.3f}")


if __name__ == "__main__":
    main()
