"""GPU self-check: the QLoRA path at real model shapes, on one GPU, in about ten minutes, downloading nothing.

Each shape is a random-weight model built from a config in policyalign/shapes/ (Qwen2.5-1.5B-Instruct, Qwen2.5-7B-Instruct)
with the embedded model's tokenizer, loaded through `policyalign.models.load_model` in 4-bit NF4 with LoRA, as users
load a real model. The checks:

  prefix_cache  the policy-prefix KV cache reproduces the full teacher pass for the frozen, EMA and live teachers,
                with both adapters perturbed, the model in training mode with gradient checkpointing on
  distill       `distill` steps at reference-like lengths (the general policy, ~400 tokens; answers of
                --answer-tokens): step time, answer tokens/s, peak memory; every loss finite, no step skipped
  generate      batched sampling against one request at a time (tokens/s), and the greedy answers' agreement
  mc_scoring    multiple-choice scoring (the head on the last position only) against full logits: peak memory
  resume        a run stopped after its first checkpoint and resumed ends where an uninterrupted run does

`--device cpu` runs the same code at the `toy` shape (the 1.5B config shrunk to 2 layers of width 64), which CI does
so that the script never rots. Figures go to bench/results/gpu_check-<device>.txt (rewritten after every check, so a
run cut short keeps what it measured); the exit status is 1 when a check fails.

    python bench/gpu_check.py                      # CUDA: qwen2.5-1.5b (all checks), then qwen2.5-7b (distill, mc_scoring)
    python bench/gpu_check.py --device cpu         # the toy shape on CPU, about a minute
"""
from __future__ import annotations
import argparse, math, os, platform, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")     # deterministic cuBLAS, for the resume check
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, PeakMemory, mib, shape_model_dir, stable_malloc, timed

CHECKS = ("prefix_cache", "distill", "generate", "mc_scoring", "resume")
DEFAULT_CHECKS = {"toy": CHECKS, "qwen2.5-1.5b": CHECKS, "qwen2.5-7b": ("distill", "mc_scoring")}
DEFAULT_ANSWERS = {"toy": 32, "qwen2.5-1.5b": 1024, "qwen2.5-7b": 512}


class Report:
    "Lines of the results file, rewritten after every check."
    def __init__(self, path): self.path, self.lines, self.failed = Path(path), [], []
    def __call__(self, line=""):
        print(line, flush=True); self.lines.append(line)
        tmp = self.path.with_suffix(".tmp"); tmp.write_text("\n".join(self.lines) + "\n"); os.replace(tmp, self.path)
    def check(self, name, ok, detail):
        self(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
        if not ok: self.failed.append(name)


def versions() -> str:
    import importlib.metadata as md
    out = []
    for p in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try: out.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError: out.append(f"{p} missing")
    return ", ".join(out)


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "policyalign", "bench"], cwd=root, capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError): return "unknown (not a git checkout)"


def device_name(device: str) -> str:
    import torch
    if device == "cuda": return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def restore(model, state):
    import torch
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state: p.copy_(state[n])


def drop_ema(model):
    if "ema" in model.peft_config: model.delete_adapter("ema")
    model.set_adapter("default")


# ---------------------------------------------------------------------------------------------------- the checks
def check_prefix_cache(model, tok, policy, args, report):
    import torch
    from policyalign.distill import add_ema_adapter
    from policyalign.policy import Prompter
    from policyalign.rollout import TEACHERS, PolicyPrefix, context_length, pair_batch, prepare_prompts, rollout, score_tokens
    pr = Prompter(tok, policy)
    s_p, t_p = prepare_prompts(pr, REQUESTS[:4], args.short_answers, context_length(model))
    add_ema_adapter(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.1)                   # student and EMA adapters: each its own B != 0
    b = pair_batch(s_p, t_p, rollout(model, tok, s_p, args.short_answers, seed=0).answer_ids, tok.pad_token_id)
    model.train()                                                 # as in a training step: checkpointed layers active
    lp, worst = {}, 0.0
    for teacher in TEACHERS:
        with torch.no_grad():
            full = score_tokens(model, b, teacher)[1][:, 1]
            cached = score_tokens(model, b, teacher, prefix=PolicyPrefix(pr), version=teacher)[1][:, 1]
        worst, lp[teacher] = max(worst, (cached - full).abs().max().item()), full
    gap = min((lp[a] - lp[c]).abs().mean().item() for a, c in (("frozen", "ema"), ("frozen", "live"), ("ema", "live")))
    tol = 1e-4 if args.precision_used == "fp32" else 0.1 * gap      # half precision: far below what tells the teachers apart
    report.check("prefix_cache", worst <= tol and gap > 10 * worst,
                 f"max |cached - full| teacher log-prob {worst:.2e} (tolerance {tol:.1e}); teachers differ by {gap:.3f} on average "
                 f"(prefix {len(PolicyPrefix(pr))} tokens, {int(b.answer_mask.sum())} answer tokens)")
    model.eval()


def check_distill(model, tok, policy, args, report):
    from policyalign.distill import DistillConfig, distill
    cfg = DistillConfig(steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro_batch, rollout_batch_size=args.batch,
                        max_new_tokens=args.answer_tokens, checkpoint_every=args.steps, lr=1e-4, seed=0)
    with tempfile.TemporaryDirectory() as out:
        res, dt, peak = timed(lambda: distill(model, tok, policy, REQUESTS, cfg, out_dir=out, progress=False), args.device)
    h = res.history
    for m in h:
        report(f"        step {m['step']}: {m['seconds']:.1f} s, {m['answer_tokens']:.0f} answer tokens x {args.batch}, "
               f"{m['tokens_per_s']:.0f} answer tokens/s, loss {m['loss']:.4f}, grad norm {m['grad_norm']:.3f}")
    ok = len(h) == args.steps and all(math.isfinite(m["loss"]) and not m["skipped"] for m in h)
    report.check("distill", ok, f"{len(h)} steps of {args.batch} requests, median step {sorted(m['seconds'] for m in h)[len(h)//2]:.1f} s, "
                 f"peak memory +{mib(peak)} above the loaded model")


def check_generate(model, tok, policy, args, report):
    from policyalign.models import generate
    from policyalign.policy import Prompter
    prompts = [Prompter(tok, policy).student(r) for r in REQUESTS]
    n = args.short_answers
    g, t_batch, _ = timed(lambda: generate(model, tok, prompts, n, temperature=1.0, seed=0, batch_size=len(prompts)), args.device)
    one, t_one, _ = timed(lambda: generate(model, tok, prompts[:2], n, temperature=1.0, seed=0, batch_size=1), args.device)
    rate_b, rate_1 = sum(map(len, g.answer_ids)) / t_batch, sum(map(len, one.answer_ids)) / t_one
    model.train()                                              # as a training step leaves it: generation must not care
    greedy = generate(model, tok, prompts[:4], n, temperature=0, batch_size=4).answer_ids
    alone = [generate(model, tok, [p], n, temperature=0).answer_ids[0] for p in prompts[:4]]
    same = sum(a == b for x, y in zip(greedy, alone) for a, b in zip(x, y)) / max(1, sum(map(len, alone)))
    exact = args.precision_used == "fp32"                      # in half precision, padding may flip near-ties of a random model
    report.check("generate", all(g.answer_ids) and rate_b > 0 and (same == 1 or not exact),
                 f"batch of {len(prompts)}: {rate_b:.0f} tokens/s; one at a time: {rate_1:.0f} tokens/s ({rate_b / rate_1:.1f}x); "
                 f"greedy batched = one at a time on {100 * same:.0f}% of tokens{' (required: all, in fp32)' if exact else ''}")


def check_mc_scoring(model, tok, policy, args, report):
    import torch
    from policyalign.evaluation import choice_correct, mc_prompt
    from policyalign.models import autocast, left_pad
    from policyalign.policy import Prompter
    items = [dict(request=f"{r} Which option fits best?", choices=["yes", "no", "maybe", "never"], answer=i % 4) for i, r in enumerate(REQUESTS)]
    got, _, peak_last = timed(lambda: choice_correct(model, tok, policy, items, "oracle", batch_size=len(items)), args.device)
    ids, mask = left_pad([Prompter(tok, policy).ids(mc_prompt(it), True) for it in items], tok.pad_token_id)
    dev = next(model.parameters()).device
    def full():
        with torch.no_grad(), autocast(model), model.disable_adapter():
            return model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits[:, -1].shape
    _, _, peak_full = timed(full, args.device)
    report.check("mc_scoring", len(got) == len(items) and peak_last < peak_full,
                 f"{len(items)} questions of {ids.shape[1]} tokens in one batch: peak +{mib(peak_last)} with the head on the last "
                 f"position, +{mib(peak_full)} with full logits ({peak_last / max(1, peak_full):.2f}x)")


def check_resume(model, tok, policy, args, report):
    import torch
    from policyalign.distill import DistillConfig, distill, trainable_params
    cfg = DistillConfig(steps=3, batch_size=4, micro_batch_size=4, rollout_batch_size=4, max_new_tokens=args.short_answers,
                        checkpoint_every=1, keep_checkpoints=3, lr=1e-3, seed=0)
    start = lora_state(model)
    flat = lambda: torch.cat([p.detach().float().flatten() for p in trainable_params(model)])
    begin = flat()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        distill(model, tok, policy, REQUESTS, cfg, out_dir=a, progress=False); straight = flat()
        restore(model, start)
        distill(model, tok, policy, REQUESTS, cfg, out_dir=b, progress=False, callback=lambda m: m["step"] < 1)   # "killed" after step 1
        restore(model, start)                                                                                       # a fresh process
        resumed = distill(model, tok, policy, REQUESTS, cfg, out_dir=b, progress=False)
        moved, diff = (straight - begin).abs().max().item(), (flat() - straight).abs().max().item()
    exact = args.device == "cpu"
    ok = len(resumed.history) == 3 and (diff == 0 if exact else diff <= 0.01 * moved)
    report.check("resume", ok, f"stopped after step 1, resumed to step 3: max |resumed - uninterrupted| = {diff:.2e} "
                 f"(the adapter moved {moved:.2e}; required: {'identical on CPU' if exact else 'within 1% of that on CUDA, where kernels may differ run to run'})")
    restore(model, start)


RUN = {"prefix_cache": check_prefix_cache, "distill": check_distill, "generate": check_generate,
       "mc_scoring": check_mc_scoring, "resume": check_resume}


def run_shape(shape, args, report):
    import torch
    from policyalign.models import ModelConfig, load_model, resolve_precision
    from policyalign.policy import Prompter, load_policy
    args.answer_tokens = args.answer_tokens_arg or DEFAULT_ANSWERS[shape]
    checks = args.checks or DEFAULT_CHECKS[shape]
    t0 = time.perf_counter()
    folder = shape_model_dir(shape, args.device, args.workdir)
    pm = PeakMemory(args.device)
    with pm:
        model, tok = load_model(ModelConfig(name=folder, device=args.device, quantize="4bit", precision=args.precision))
    args.precision_used = resolve_precision(args.precision, args.device)
    policy = load_policy(args.policy)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    report(f"\n## {shape}: {model.config.num_hidden_layers} layers, width {model.config.hidden_size}, vocabulary {model.config.vocab_size}; "
           f"4-bit NF4 + LoRA r=16, computing in {args.precision_used}; built and loaded in {time.perf_counter() - t0:.0f} s, "
           f"{mib(pm.peak)} for the loaded model ({n_params / 1e6:.0f}M stored parameters)")
    report(f"   policy '{args.policy}': teacher prompts start with {len(Prompter(tok, policy).teacher(''))} tokens; "
           f"answers {args.answer_tokens} tokens (distill), {args.short_answers} (other checks)")
    start = lora_state(model)
    for name in checks:
        try: RUN[name](model, tok, policy, args, report)
        except Exception as e:                                      # one failing check does not hide the others
            report.check(name, False, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        drop_ema(model); restore(model, start); model.eval()
        if args.device == "cuda": torch.cuda.empty_cache()
    del model
    if args.device == "cuda": torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shapes", default=None, help="comma-separated: toy, qwen2.5-1.5b, qwen2.5-7b (default: both Qwen shapes on CUDA, toy on CPU)")
    ap.add_argument("--checks", default=None, help=f"comma-separated subset of {', '.join(CHECKS)} (default: per shape)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--answer-tokens", dest="answer_tokens_arg", type=int, default=None, help="distill answer length (default 1024 for 1.5B, 512 for 7B, 32 toy)")
    ap.add_argument("--short-answers", type=int, default=None, help="answer length of the other checks (default 128 on CUDA, 8 on CPU)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--policy", default="general")
    ap.add_argument("--workdir", default=None, help="where the random-weight models are built (default: the temp folder)")
    ap.add_argument("--out", default=str(Path(__file__).parent/"results"), help="folder of the results file")
    args = ap.parse_args()
    if args.device == "cpu": stable_malloc()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run `python bench/gpu_check.py --device cpu` for the toy-shape check")
    if args.device == "cpu": torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)
    shapes = args.shapes.split(",") if args.shapes else (["qwen2.5-1.5b", "qwen2.5-7b"] if args.device == "cuda" else ["toy"])
    args.checks = args.checks.split(",") if args.checks else None
    if bad := [c for c in (args.checks or []) if c not in CHECKS]: raise SystemExit(f"unknown check(s) {bad}; use {CHECKS}")
    args.short_answers = args.short_answers or (128 if args.device == "cuda" else 8)
    slug = "cpu" if args.device == "cpu" else torch.cuda.get_device_name(0).lower().replace(" ", "-")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = Report(Path(args.out)/f"gpu_check-{slug}.txt")
    report(f"# policyalign GPU self-check, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    report(f"device: {device_name(args.device)}; {versions()}; commit {commit()}")
    report(f"command: python bench/gpu_check.py {' '.join(sys.argv[1:])}")
    t0 = time.perf_counter()
    for shape in shapes: run_shape(shape, args, report)
    report(f"\n{'all checks passed' if not report.failed else 'FAILED: ' + ', '.join(report.failed)} in {time.perf_counter() - t0:.0f} s")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
