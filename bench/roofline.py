"""How close each part of a distillation step comes to this machine's matmul throughput at that part's own shapes.

`policyalign.distill.distill_step` runs on 8 requests with answers of exactly `--answer-tokens` tokens; each step is
timed in four parts (`_common.time_parts`): rollout (the student samples), teacher (its forward pass), optimiser
(AdamW), and the student's forward + backward (with the loss, clipping and the rest of the step). FLOP are counted from the model's config and
the step's real (unpadded) token counts, the useful work only (no padding, no recomputation):

    decoder   2 P_dec per token forward, P_dec = the decoder's linear weights (attention and MLP projections);
              causal attention 2 d_attn per attended position per layer for QK^T and again for AV
    head      2 d V per token, only where its logits are used: each sampled token in the rollout, and the answer
              tokens of the teacher and the student (not their prompts)
    student   forward as above with LoRA (2 P_lora per token); backward 2 P_dec per token (gradients of the activations
              only: the frozen base's weight gradients are never computed) + 4 P_lora + twice the attention + the head's
              2 d V per answer token: about 4 P per token, not the 6 P of full training
    rollout   the student with its adapter: prompt tokens once (prefill), then one token at a time
    teacher   the adapter off; with the prefix cache, only request + answer tokens run (attending to the cached policy)

The peak is measured at the step's own shapes: every (M, K) x (K, N) matmul a part runs is timed alone (best of
`--repeats`), and a part's ideal time is the sum of its FLOP / that shape's GFLOP/s. The fraction of peak is ideal
time / measured time: 1.0 would mean the part did nothing but matmuls, each as fast as it runs alone. (Attention's
FLOP are in the GFLOP column but not in the ideal time: they are many small batched products, not one shape.)
Last line: `ratio fraction_of_peak=<student part>`. Run: `python bench/roofline.py [--device cuda] [--answer-tokens 32]`;
`--toy`: seconds, at toy size (CI).
"""
from __future__ import annotations
import argparse, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, add_output_arguments, add_shape_argument, begin, finish, results_name, load, load_bench_model, median, policyalign_parts, sync, time_parts


def matmul_gflops(shape, device, repeats, cache={}):
    "Best-of-`repeats` GFLOP/s of one (M, K) x (K, N) matmul in the model's compute type."
    import torch
    if shape not in cache:
        M, K, N = shape
        dt = torch.float32 if device == "cpu" else torch.bfloat16
        a, b = torch.randn(M, K, device=device, dtype=dt), torch.randn(K, N, device=device, dtype=dt)
        a @ b; sync(device)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter(); a @ b; sync(device); ts.append(time.perf_counter() - t0)
        cache[shape] = 2 * M * K * N / min(ts) / 1e9
    return cache[shape]


class Dims:
    "The sizes the FLOP count needs, from the model."
    def __init__(self, model):
        base = model.get_base_model()
        c = base.config
        self.L, self.d, self.V = c.num_hidden_layers, c.hidden_size, base.get_output_embeddings().weight.shape[0]
        self.d_attn = c.num_attention_heads * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
        lin = [(n, p) for n, p in base.get_decoder().named_parameters() if p.ndim == 2 and "lora_" not in n and "embed" not in n]
        self.linears = [tuple(p.shape) for _, p in lin]            # (out, in) of each decoder projection, all layers
        self.P_dec = sum(o * i for o, i in self.linears)
        self.P_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and ".default." in n)

    def attention(self, ctx_from, ctx_to):
        "Causal attention FLOP (QK^T and AV, all layers) for query positions ctx_from+1..ctx_to of one sequence."
        return 4 * self.L * self.d_attn * sum(range(ctx_from + 1, ctx_to + 1))

    def matmuls(self, tokens, head_tokens, backward=False):
        "The (M, K, N) shapes run over `tokens` rows (decoder) and `head_tokens` rows (head); backward adds dX = dY W."
        shapes = [(tokens, i, o) for o, i in self.linears] + [(head_tokens, self.d, self.V)]
        return shapes + ([(m, n, k) for m, k, n in shapes] if backward else [])


def flop_and_shapes(D, s_lens, t_lens, prefix, A, n):
    "FLOP per part and the matmul shapes each runs, for `n` requests with student/teacher prompt lengths and `A` answer tokens."
    s_tok, t_tok = sum(s_lens) + n * A, sum(t - prefix for t in t_lens) + n * A
    roll = 2 * (D.P_dec + D.P_lora) * (sum(s_lens) + n * (A - 1)) + 2 * D.d * D.V * n * A \
        + sum(D.attention(0, s + A - 1) for s in s_lens)
    teach = 2 * D.P_dec * t_tok + 2 * D.d * D.V * n * A + sum(D.attention(prefix, t + A) for t in t_lens)
    s_attn = sum(D.attention(0, s + A) for s in s_lens)
    stud = (2 * D.P_dec + 2 * D.P_lora) * s_tok + 2 * D.d * D.V * n * A + s_attn \
        + (2 * D.P_dec + 4 * D.P_lora) * s_tok + 2 * D.d * D.V * n * A + 2 * s_attn
    shapes = dict(rollout=D.matmuls(sum(s_lens), n) + D.matmuls(n, n) * (A - 1),   # prefill, then A-1 one-token steps
                  teacher=D.matmuls(t_tok, n * A), student=D.matmuls(s_tok, n * A, backward=True))
    return dict(rollout=roll, teacher=teach, student=stud), shapes


def ideal_seconds(shapes, device, repeats):
    "Time the listed matmuls would take, each at its own measured speed."
    return sum(2 * M * K * N / (matmul_gflops((M, K, N), device, repeats) * 1e9) for M, K, N in shapes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_shape_argument(ap)
    ap.add_argument("--repeats", type=int, default=5, help="timings per matmul shape (the best counts)")
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="measured distill steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-prefix-cache", action="store_true")
    add_output_arguments(ap, "roofline")
    args = ap.parse_args()
    if args.toy: args.shape, args.answer_tokens, args.steps, args.repeats = "toy", 4, 1, 1
    name = results_name("roofline", args.answer_tokens, 32)
    begin(args.device, args.threads)

    from policyalign.distill import DistillConfig, distill_step, make_optimizer
    from policyalign.policy import Prompter, load_policy
    from policyalign.rollout import PolicyPrefix
    model, tok = load_bench_model(args.device, shape=args.shape)
    D = Dims(model)
    pr = Prompter(tok, load_policy("general"))
    cfg = DistillConfig(steps=10_000, batch_size=8, micro_batch_size=8, rollout_batch_size=8, max_new_tokens=args.answer_tokens,
                        min_new_tokens=args.answer_tokens)
    opt, sched = make_optimizer(model, cfg)
    prefix = None if args.no_prefix_cache else PolicyPrefix(pr)
    s_p, t_p = [pr.student(r) for r in REQUESTS], [pr.teacher(r) for r in REQUESTS]
    cached = prefix is not None and prefix.matches(t_p)
    patches = policyalign_parts(opt)
    runs = []
    for i in range(1 + args.steps):
        m, total, parts = time_parts(lambda: distill_step(model, tok, pr, REQUESTS, cfg, opt, sched, i, prefix), patches, args.device)
        print(f"{'warm-up' if i == 0 else 'step'} {i}: {total:.2f} s = " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
              + f"; {m['answer_tokens']:.0f} answer tokens/request  load {load()}", flush=True)
        if i: runs.append(parts)
    A = args.answer_tokens
    flop, shapes = flop_and_shapes(D, list(map(len, s_p)), list(map(len, t_p)), len(prefix) if cached else 0, A, len(REQUESTS))
    print(f"P_dec = {D.P_dec / 1e6:.1f} M decoder weights, head {D.d} x {D.V}, P_lora = {D.P_lora / 1e6:.2f} M; "
          f"student prompts {sum(map(len, s_p))} tokens, teacher prompts {sum(map(len, t_p))} (prefix cache "
          f"{'applies: ' + str(len(prefix)) + ' tokens each not run' if cached else 'off'}), answers {len(REQUESTS)} x {A}")
    print(f"{'part':10s} {'seconds':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'ideal s':>8s} {'fraction of peak':>17s}")
    fractions = {}
    for part in ("rollout", "teacher", "student", "optimiser"):
        sec = median([r[part] for r in runs])
        if part == "optimiser":
            print(f"{part:10s} {sec:8.3f} {'-':>8s} {'-':>8s} {'-':>8s} {'(no matmuls)':>17s}"); continue
        ideal = ideal_seconds(shapes[part], args.device, args.repeats)
        fractions[part] = ideal / sec
        print(f"{part:10s} {sec:8.3f} {flop[part] / 1e9:8.2f} {flop[part] / sec / 1e9:8.1f} {ideal:8.3f} {fractions[part]:17.2f}")
    total = median([sum(r.values()) for r in runs])
    print(f"whole step {total:.2f} s: {sum(flop.values()) / 1e9:.2f} GFLOP, {sum(flop.values()) / total / 1e9:.1f} GFLOP/s")
    finish(args, name, f"fraction_of_peak={fractions['student']:.3f}")


if __name__ == "__main__":
    main()
