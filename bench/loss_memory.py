"""Peak memory of the loss: `chunked_head_divergence` against the naive full-vocabulary computation, with backward.

Shapes: `--batch` answers x `--answer-tokens` tokens = n positions, hidden size `--hidden` (576, SmolLM2-135M) and
vocabulary `--vocab` (49152). Inputs are the student hidden states `(n, d)` (requiring grad, as after the decoder),
the teacher hidden states `(n, d)`, the sampled tokens and the frozen output-head weight `(V, d)`.

- chunked: `policyalign.losses.chunked_head_divergence(..., divergence="topk_reverse_kl", top_k=256)` at its default
  chunk (`policyalign.losses.LOSS_CHUNK`, 512 positions; `--chunk` to change it), then
  `loss.sum().backward()`. Logits exist one chunk at a time and are recomputed in backward (checkpointing).
- naive: full logits for student and teacher `(n, V)`, `log_softmax`, `topk_reverse_kl` (the same top-k reverse KL),
  then backward.

Each variant runs in its own fresh subprocess, so neither inherits the other's freed-but-cached memory. On CPU the
figure is the growth of the resident set's high-water mark (`VmHWM`, reset after the inputs exist); on CUDA it is
`torch.cuda.max_memory_allocated()` above the inputs. The two losses are also compared (they must agree).
Last line: `ratio peak_mem=<chunked/naive>`. Run: `python bench/loss_memory.py [--device cuda] [--batch 8] [--shape qwen2.5-7b]`;
`--toy`: seconds, at toy size (CI).
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SHAPES, PeakMemory, add_output_arguments, begin, bench_config, finish, load, mib, setup


def run_variant(args):
    import torch
    from policyalign.losses import chunked_head_divergence, topk_reverse_kl
    torch.manual_seed(0)
    n, d, V, dev = args.batch * args.answer_tokens, args.hidden, args.vocab, args.device
    dt = torch.float32 if dev == "cpu" else torch.bfloat16
    s_h = (torch.randn(n, d, device=dev) * 0.5).to(dt).requires_grad_()
    t_h = (s_h.detach() + 0.05 * torch.randn(n, d, device=dev)).to(dt)
    W = (torch.randn(V, d, device=dev) / d ** 0.5 * 4).to(dt)
    tokens = torch.randint(0, V, (n,), device=dev)
    pm = PeakMemory(dev)
    t0 = time.perf_counter()
    with pm:
        if args.variant == "chunked":
            loss, _ = chunked_head_divergence(s_h, t_h, tokens, W, None, "topk_reverse_kl", args.top_k, chunk=args.chunk)
        else:
            s = (s_h @ W.T).float().log_softmax(-1)
            with torch.no_grad(): t = (t_h @ W.T).float().log_softmax(-1)
            loss = topk_reverse_kl(s, t, args.top_k)
        total = loss.sum()
        total.backward()
        if dev == "cuda": torch.cuda.synchronize()
    print(json.dumps(dict(variant=args.variant, peak=pm.peak, seconds=time.perf_counter() - t0, loss=total.item(),
                          grad_norm=s_h.grad.float().norm().item())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--shape", default=None, choices=[k for k, v in SHAPES.items() if v], help="take --hidden and --vocab from this model's config")
    ap.add_argument("--top-k", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=None, help="positions per chunk (default: policyalign.losses.LOSS_CHUNK)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", choices=["chunked", "naive"], help=argparse.SUPPRESS)  # set in the subprocesses
    add_output_arguments(ap, "loss_memory")
    args = ap.parse_args()
    if args.toy: args.batch, args.answer_tokens, args.hidden, args.vocab, args.top_k, args.chunk = 2, 16, 64, 2048, 16, 8
    if args.shape:
        cfg = bench_config(args.shape)
        args.hidden, args.vocab = cfg.hidden_size, cfg.vocab_size
    from policyalign.losses import LOSS_CHUNK
    args.chunk = args.chunk or LOSS_CHUNK
    if args.variant:
        setup(args.device, args.threads); return run_variant(args)
    begin(args.device, args.threads)
    n = args.batch * args.answer_tokens
    print(f"n = {args.batch} x {args.answer_tokens} = {n} positions, hidden {args.hidden}, vocabulary {args.vocab}, top-k {args.top_k}, chunk {args.chunk}; "
          f"one float32 (n, V) tensor is {mib(n * args.vocab * 4)}")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    res = {}
    for variant in ("chunked", "naive"):
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode: raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
        res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        r = res[variant]
        print(f"{variant:8s} peak +{mib(r['peak']):>10s}  {r['seconds']:6.1f} s  loss {r['loss']:.4f}  |grad| {r['grad_norm']:.4f}  load {load()}", flush=True)
    a, b = res["chunked"], res["naive"]
    print(f"loss relative difference {abs(a['loss'] - b['loss']) / max(abs(b['loss']), 1e-12):.1e}, "
          f"grad-norm relative difference {abs(a['grad_norm'] - b['grad_norm']) / max(b['grad_norm'], 1e-12):.1e}")
    finish(args, "loss_memory", f"peak_mem={a['peak'] / max(b['peak'], 1):.3f}")


if __name__ == "__main__":
    main()
