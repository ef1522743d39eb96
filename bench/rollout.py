"""Rollout throughput: `policyalign.models.generate` with batch_size=8 against one request at a time.

Both variants sample answers for the same 8 student prompts (no policy), temperature 1, exactly `--answer-tokens`
new tokens each (EOS suppressed with `min_new_tokens`, so both produce the same number of tokens). Throughput is
answer tokens per second of wall time; the variants alternate A B A B. Then, if vLLM is importable and CUDA is
available, the same prompts go through a vLLM engine (`--vllm`); otherwise a line says why that path is skipped.
`--batch-sizes 8,32` also times a batch of 32 prompts; `--cache-variants` also times the first batch size with HF's
static KV cache, and with the static cache and `torch.compile` (compiled during the warm-up pair). Before timing, it
times one decoding step's matrix products alone (every weight matrix of the model, the head included) at one row
and at each batch size: the most batching can gain on them; and the prompts' prefill alone at each batch size. Last line: `ratio speedup=<x> [speedup_32=<y>]`
(batched over one-at-a-time tokens/s). Run: `python bench/rollout.py [--device cuda] [--answer-tokens 32]`;
`--toy`: seconds, at toy size (CI).
"""
from __future__ import annotations
import argparse, contextlib, importlib.util, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, add_output_arguments, add_shape_argument, begin, finish, load, load_bench_model, median, shape_model_dir, timed


def vllm_path(args, prompts):
    import torch
    if importlib.util.find_spec("vllm") is None: return print("vLLM rollout backend: skipped (vllm is not installed)")
    if not torch.cuda.is_available(): return print("vLLM rollout backend: skipped (no CUDA device)")
    if not args.vllm: return print("vLLM rollout backend: skipped (pass --vllm to start an engine)")
    from vllm import LLM, SamplingParams
    llm = LLM(model=shape_model_dir(args.shape, "cuda"), dtype="bfloat16", gpu_memory_utilization=0.3)
    sp = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.answer_tokens, min_tokens=args.answer_tokens, seed=0)
    run = lambda: llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    run()
    out, dt, _ = timed(run, "cuda")
    n = sum(len(o.outputs[0].token_ids) for o in out)
    print(f"vLLM rollout backend: {n / dt:.0f} tokens/s ({n} tokens in {dt:.2f} s)")


def matmul_seconds(model, rows: int, device: str, repeats: int = 3) -> float:
    "Best-of-`repeats` seconds of one decoding step's matrix products alone: every weight matrix (LoRA's aside) at `rows` rows."
    import torch, torch.nn.functional as F
    ws = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in ws}
    with torch.no_grad():
        return min(timed(lambda: [F.linear(xs[w.shape[1]], w) for w in ws], device)[1] for _ in range(repeats))


@contextlib.contextmanager
def generate_options(model, **extra):
    "Within this context every `model.generate` call also gets the keywords `extra` (a static cache, a compile config)."
    if not extra: yield; return
    plain = model.generate
    model.generate = lambda *a, **kw: plain(*a, **kw, **extra)
    try: yield
    finally: del model.generate


def cache_variants(batch: int) -> dict:
    "Extra variants for `--cache-variants`: HF's static KV cache, alone and with `torch.compile` of the forward pass."
    from transformers import CompileConfig
    compiled = CompileConfig(); compiled._compile_all_devices = True     # generate compiles only on accelerators unless told
    return {f"batched ({batch}), static cache": (batch, dict(cache_implementation="static")),
            f"batched ({batch}), static + compile": (batch, dict(cache_implementation="static", compile_config=compiled))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_shape_argument(ap)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2, help="measured A/B pairs after one warm-up pair")
    ap.add_argument("--batch-sizes", default="8", help="comma-separated batch sizes to compare with one at a time; "
                    "a batch of B samples B prompts (the 8 requests, repeated)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-variants", action="store_true", help="also time the first batch size with a static KV cache, and with torch.compile")
    ap.add_argument("--vllm", action="store_true", help="also time a vLLM engine when vLLM and CUDA are present")
    add_output_arguments(ap, "rollout")
    args = ap.parse_args()
    if args.toy: args.shape, args.answer_tokens, args.reps, args.batch_sizes = "toy", 4, 1, "8"
    begin(args.device, args.threads)
    from policyalign.models import generate
    from policyalign.policy import Prompter, load_policy
    model, tok = load_bench_model(args.device, shape=args.shape)
    model.eval()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    prompts = [Prompter(tok, load_policy("general")).student(r) for r in REQUESTS * (max(sizes) // len(REQUESTS) + 1)]
    one_row = matmul_seconds(model, 1, args.device)
    shared = next((i for i, col in enumerate(zip(*prompts)) if len(set(col)) > 1), 0)
    for b in sizes:
        t = matmul_seconds(model, b, args.device)
        print(f"one decoding step's matrix products alone: {1000 * one_row:.1f} ms for 1 row, {1000 * t:.1f} ms for {b} rows: "
              f"batching {b} rows can gain at most {b * one_row / t:.2f}x on them")
        ps = prompts[:b]
        _, dt, _ = timed(lambda: generate(model, tok, ps, max_new_tokens=1, temperature=1.0, seed=0, batch_size=b, min_new_tokens=1), args.device)
        print(f"prefill of {b} prompts ({sum(map(len, ps))} tokens, the first {shared} of each shared by all) and one sampled token: {dt:.2f} s")
    variants = {f"batched ({b})": (b, {}) for b in sizes} | (cache_variants(sizes[0]) if args.cache_variants else {}) | {"one at a time": (1, {})}
    tps = {k: [] for k in variants}
    for i in range(1 + args.reps):
        for name, (bs, extra) in variants.items():
            ps = prompts[:max(bs, len(REQUESTS))]          # one at a time: the 8 requests; a batch: as many prompts as it holds
            with generate_options(model, **extra):
                g, dt, _ = timed(lambda: generate(model, tok, ps, max_new_tokens=args.answer_tokens, temperature=1.0,
                                                  seed=i, batch_size=bs, min_new_tokens=args.answer_tokens), args.device)
            n = sum(map(len, g.answer_ids))
            print(f"{'warm-up' if i == 0 else 'rep ' + str(i)}: {name:34s} {n} tokens in {dt:6.2f} s = {n / dt:6.1f} tokens/s  load {load()}", flush=True)
            if i: tps[name].append(n / dt)
    vllm_path(args, prompts[:len(REQUESTS)])
    one = median(tps["one at a time"])
    print("median tokens/s: " + ", ".join(f"{k} {median(v):.1f}" for k, v in tps.items()))
    finish(args, "rollout", " ".join(f"speedup{'' if b == sizes[0] else '_' + str(b)}={median(tps[f'batched ({b})']) / one:.2f}" for b in sizes))


if __name__ == "__main__":
    main()
