"""GPU self-check: the QLoRA path at real model shapes, on one GPU, in about ten minutes, downloading nothing.

Each shape is a random-weight model built from a config in policyalign/shapes/ (Qwen2.5-1.5B-Instruct, Qwen2.5-7B-Instruct)
with the embedded model's tokenizer, written to disk shard by shard from the CPU (no GPU memory is used to build it),
then loaded through `policyalign.models.load_model` in 4-bit NF4 with LoRA, as users load a real model. A shape that
fails to build or load is reported as FAIL and the next shape still runs; the 7B shape is skipped, with the reason,
on a card with less than 24 GB. A random model's output hardly depends on its input, so the checks that need a
student unlike its teacher first give the LoRA B matrices random values (PEFT starts them at zero); the query and key
projections get the larger ones, which makes attention sharp enough to depend on positions. The checks, per shape:

  prefix_cache   the policy-prefix KV cache reproduces the full teacher pass (frozen, EMA and live teachers, model in
                 training mode with gradient checkpointing on) within 5x the noise floor, which is measured at the
                 run's precision as the largest teacher log-prob difference between equivalent uncached passes (the
                 batch with 8 more padding columns, and each row alone); `--inject-bug off-by-one|stale-prefix` make it fail
  distill        `distill` steps at reference-like lengths (the general policy, ~400 tokens; answers of --answer-tokens):
                 step time, answer tokens/s, peak memory; every loss and gradient norm finite and non-zero, every
                 adapter tensor receives a finite non-zero gradient and moves by more than weight decay alone could
  finite_logits  in the run's precision (fp16 on a T4, where overflow bites): the logits of a left-padded forward pass
                 over a few hundred tokens are all finite, and sampled answers are not all token 0 nor one repeated token
  generate       batched sampling against one request at a time (tokens/s), sampled answers not degenerate, and the
                 greedy answers' agreement (exact in fp32)
  mc_scoring     multiple-choice scoring (the head on the last position only) against full logits: peak memory
  resume         a run stopped after its first checkpoint and resumed ends where an uninterrupted run does

and once per run:

  placement      with 2+ GPUs, under `torchrun --nproc_per_node 2`: every rank's parameters and every tensor a distill
                 step all-reduces are on cuda:$LOCAL_RANK (skipped, with the reason, on fewer GPUs)

`--device cpu` runs the same code at the `toy` shape (the 1.5B config shrunk to 2 layers of width 64), which CI does
in fp32, bf16 and fp16 so that the script never rots. Figures go to bench/results/gpu_check-<device>.txt (rewritten
after every check, so a run cut short keeps what it measured); the exit status is 1 when a check fails.

    python bench/gpu_check.py                      # CUDA: qwen2.5-1.5b (all checks), then qwen2.5-7b (distill, finite_logits, mc_scoring)
    python bench/gpu_check.py --device cpu         # the toy shape on CPU, about a minute
"""
from __future__ import annotations
import argparse, dataclasses, gc, json, math, os, platform, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")     # deterministic cuBLAS, for the resume check
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, PeakMemory, mib, shape_model_dir, stable_malloc, timed

CHECKS = ("prefix_cache", "distill", "finite_logits", "generate", "mc_scoring", "resume")
DEFAULT_CHECKS = {"toy": CHECKS, "qwen2.5-1.5b": CHECKS, "qwen2.5-7b": ("distill", "finite_logits", "mc_scoring")}
DEFAULT_ANSWERS = {"toy": 32, "qwen2.5-1.5b": 1024, "qwen2.5-7b": 512}
MIN_GPU_GIB = {"qwen2.5-7b": 22}      # a 24 GB card (L4, A10G) reports about 22.5 GiB; a T4 14.7 GiB
NOISE_FACTOR = 5                      # prefix_cache tolerance: this many times the measured noise floor
BUGS = ("off-by-one", "stale-prefix")


class Report:
    "Lines of the results file, rewritten after every check."
    def __init__(self, path): self.path, self.lines, self.failed, self.shape, self.t0 = Path(path), [], [], "", time.perf_counter()
    def __call__(self, line=""):
        print(line, flush=True); self.lines.append(line)
        tmp = self.path.with_suffix(".tmp"); tmp.write_text("\n".join(self.lines) + "\n"); os.replace(tmp, self.path)
    def start(self): self.t0 = time.perf_counter()
    def check(self, name, ok, detail):
        self(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail} [{time.perf_counter() - self.t0:.0f} s]")
        if not ok: self.failed.append(f"{self.shape}/{name}" if self.shape else name)
    def skip(self, name, why): self(f"  SKIP  {name}: {why}")


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


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def free_memory(device: str):
    import torch
    gc.collect()
    if device == "cuda": torch.cuda.empty_cache()


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


def perturb_adapters(model, seed: int = 1, qk: float = 0.3, other: float = 0.1):
    "Draw every LoRA B matrix (of every adapter) from normal(0, qk) in the query/key projections, normal(0, other) elsewhere."
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n: p.normal_(0, qk if ("q_proj" in n or "k_proj" in n) else other)


def degenerate(answers) -> str | None:
    "Why sampled answers look like broken logits (an empty answer, all token 0, one token repeated), or None."
    tokens = [t for a in answers for t in a]
    if not all(answers): return f"{sum(not a for a in answers)} empty answer(s)"
    if not any(tokens): return "every token is 0"
    if len(set(tokens)) == 1: return f"every token is {tokens[0]}"
    return None


def inject_bug(name: str):
    "Plant a known bug, so that a test can show the check meant to catch it failing."
    import policyalign.rollout as rollout
    if name == "off-by-one":                    # the tokens after the cached prefix get positions one too far on
        right = rollout._positions
        rollout._positions = lambda mask, offset=0: right(mask, offset + 1 if offset else 0)
    if name == "stale-prefix":                  # the cache keeps the first teacher's keys and values for every version
        get = rollout.PolicyPrefix.get
        rollout.PolicyPrefix.get = lambda self, dec, version: self.kv if self.kv is not None else get(self, dec, version)


# ---------------------------------------------------------------------------------------------------- prefix_cache
def teacher_logp(model, batch, teacher, prefix=None):
    "The teacher's log-prob of every answer token (row-major), without gradient."
    import torch
    from policyalign.rollout import score_tokens
    with torch.no_grad(): return score_tokens(model, batch, teacher, prefix=prefix, version=teacher)[1][:, 1].float()


def widened(batch, extra: int, pad_id: int):
    "The same batch with `extra` more left-padding columns on the teacher side."
    import torch
    grow = lambda x, v: torch.cat([x.new_full((x.shape[0], extra), v), x], 1)
    return dataclasses.replace(batch, teacher_ids=grow(batch.teacher_ids, pad_id), teacher_mask=grow(batch.teacher_mask, 0))


def noise_floor(model, batch, rows, teacher, pad_id):
    "The full teacher log-probs, and their largest difference to two equivalent uncached passes (wider padding; one row at a time)."
    import torch
    from policyalign.rollout import pair_batch
    full = teacher_logp(model, batch, teacher)
    wide = teacher_logp(model, widened(batch, 8, pad_id), teacher)
    alone = torch.cat([teacher_logp(model, pair_batch(*(x[i:i + 1] for x in rows), pad_id), teacher) for i in range(len(rows[0]))])
    return full, max((wide - full).abs().max().item(), (alone - full).abs().max().item())


def check_prefix_cache(model, tok, policy, args, report):
    from policyalign.distill import add_ema_adapter
    from policyalign.policy import Prompter
    from policyalign.rollout import TEACHERS, PolicyPrefix, context_length, pair_batch, prepare_prompts, rollout
    pr = Prompter(tok, policy)
    s_p, t_p = prepare_prompts(pr, REQUESTS[:4], args.short_answers, context_length(model))
    add_ema_adapter(model); perturb_adapters(model)                   # student and EMA adapters: each its own B != 0
    answers = rollout(model, tok, s_p, args.short_answers, seed=0).answer_ids
    rows = (s_p, t_p, answers)
    b = pair_batch(*rows, tok.pad_token_id)
    model.train()                                                     # as in a training step: checkpointed layers active
    lp, worst, noise, prefix = {}, 0.0, 0.0, PolicyPrefix(pr)      # one cache, as in training: a new teacher version must refresh it
    for teacher in TEACHERS:
        lp[teacher], n = noise_floor(model, b, rows, teacher, tok.pad_token_id)
        cached = teacher_logp(model, b, teacher, prefix=prefix)
        worst, noise = max(worst, (cached - lp[teacher]).abs().max().item()), max(noise, n)
    gap = min((lp[a] - lp[c]).abs().mean().item() for a, c in (("frozen", "ema"), ("frozen", "live"), ("ema", "live")))
    tol = max(NOISE_FACTOR * noise, 1e-5)                             # the floor: a few float32 roundings of a log-prob
    report.check("prefix_cache", worst <= tol and gap > max(tol, 10 * worst),
                 f"max |cached - full| teacher log-prob {worst:.2e}, tolerance {tol:.2e} = {NOISE_FACTOR} x the noise floor "
                 f"{noise:.2e} in {args.precision_used}; teachers differ by {gap:.3f} on average "
                 f"(prefix {len(prefix)} tokens, {int(b.answer_mask.sum())} answer tokens)")
    model.eval()


# ---------------------------------------------------------------------------------------------------- distill
class GradProbe:
    "Within this context, record each tensor's largest gradient magnitude and whether every gradient was finite (frozen tensors get none)."
    def __init__(self, params: dict): self.params, self.largest, self.finite = params, {}, True

    def __enter__(self):
        self.hooks = [p.register_post_accumulate_grad_hook(self._record(n)) for n, p in self.params.items() if p.requires_grad]
        return self

    def __exit__(self, *exc):
        for h in self.hooks: h.remove()

    def _record(self, name):
        import torch
        def record(p):
            self.finite &= bool(torch.isfinite(p.grad).all())
            self.largest[name] = max(self.largest.get(name, 0.0), p.grad.abs().max().item())
        return record

    def dead(self) -> list[str]: return [n for n in self.params if not self.largest.get(n, 0.0) > 0]


def check_distill(model, tok, policy, args, report):
    from policyalign.distill import DistillConfig, distill
    cfg = DistillConfig(steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro_batch, rollout_batch_size=args.batch,
                        max_new_tokens=args.answer_tokens, checkpoint_every=args.steps, lr=1e-4, seed=0)
    perturb_adapters(model)                                           # else the student is the frozen teacher: zero loss
    adapter = {n: p for n, p in model.named_parameters() if "lora_" in n and ".default." in n}   # the student adapter, frozen or not
    before = {n: p.detach().clone() for n, p in adapter.items()}
    with GradProbe(adapter) as probe, tempfile.TemporaryDirectory() as out:
        res, dt, peak = timed(lambda: distill(model, tok, policy, REQUESTS, cfg, out_dir=out, progress=False), args.device)
    h = res.history
    for m in h:
        report(f"        step {m['step']}: {m['seconds']:.1f} s, {m['answer_tokens']:.0f} answer tokens x {args.batch}, "
               f"{m['tokens_per_s']:.0f} answer tokens/s, loss {m['loss']:.3g}, grad norm {m['grad_norm']:.3g}")
    moved = min((p.detach() - before[n]).abs().max().item() for n, p in adapter.items())
    steps_ok = len(h) == args.steps and all(0 < m["loss"] < math.inf and 0 < m["grad_norm"] < math.inf and not m["skipped"] for m in h)
    dead = probe.dead()
    report.check("distill", steps_ok and probe.finite and not dead and moved > 0.1 * cfg.lr,
                 f"{len(h)} steps of {args.batch} requests, median step {sorted(m['seconds'] for m in h)[len(h)//2]:.1f} s, "
                 f"peak memory +{mib(peak)} above the loaded model; {len(adapter) - len(dead)} of {len(adapter)} adapter tensors "
                 f"got a non-zero gradient ({'all finite' if probe.finite else 'NOT all finite'}), the least moved one by {moved:.1e} "
                 f"(required: losses and gradient norms finite and > 0, every tensor a gradient, movement > 0.1 x lr = {0.1 * cfg.lr:.0e})")


# ---------------------------------------------------------------------------------------------------- finite_logits, generate
def check_finite_logits(model, tok, policy, args, report):
    import torch
    from policyalign.models import autocast, eval_mode, generate, left_pad
    from policyalign.policy import Prompter
    pr = Prompter(tok, policy)
    rows = [pr.teacher(REQUESTS[0]), pr.teacher(REQUESTS[5])[-200:]]  # a few hundred tokens, the second row left-padded
    ids, mask = left_pad(rows, tok.pad_token_id)
    dev = next(model.parameters()).device
    with torch.no_grad(), eval_mode(model), autocast(model):
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits[mask.to(dev).bool()]
    bad, dtype = int((~torch.isfinite(logits)).sum()), logits.dtype
    del logits
    try:
        g = generate(model, tok, [pr.student(r) for r in REQUESTS[:4]], args.short_answers, temperature=1.0, seed=0, batch_size=4)
        tokens = [t for a in g.answer_ids for t in a]
        broken, answers = degenerate(g.answer_ids), f"{len(set(tokens))} distinct tokens of {len(tokens)}"
    except Exception as e: broken = describe(e)
    report.check("finite_logits", bad == 0 and broken is None,
                 f"{int(mask.sum())} tokens in {args.precision_used} (logits {str(dtype).replace('torch.', '')}): {bad} non-finite logits; "
                 f"4 sampled answers: {broken or answers}")


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
    broken = degenerate(g.answer_ids)
    report.check("generate", broken is None and rate_b > 0 and (same == 1 or not exact),
                 f"batch of {len(prompts)}: {rate_b:.0f} tokens/s; one at a time: {rate_1:.0f} tokens/s ({rate_b / rate_1:.1f}x); "
                 f"sampled answers {broken or 'not degenerate'}; "
                 f"greedy batched = one at a time on {100 * same:.0f}% of tokens{' (required: all, in fp32)' if exact else ''}")


# ---------------------------------------------------------------------------------------------------- mc_scoring, resume
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
    perturb_adapters(model)                                    # a non-zero loss, so that the path depends on every step
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
    ok = len(resumed.history) == 3 and moved > 0 and (diff == 0 if exact else diff <= 0.01 * moved)
    report.check("resume", ok, f"stopped after step 1, resumed to step 3: max |resumed - uninterrupted| = {diff:.2e} "
                 f"(the adapter moved {moved:.2e}; required: {'identical on CPU' if exact else 'within 1% of that on CUDA, where kernels may differ run to run'})")
    restore(model, start)


RUN = {"prefix_cache": check_prefix_cache, "distill": check_distill, "finite_logits": check_finite_logits,
       "generate": check_generate, "mc_scoring": check_mc_scoring, "resume": check_resume}


# ---------------------------------------------------------------------------------------------------- placement (2+ GPUs)
def placement_worker(folder: str):
    "Run by each torchrun process: load the model on this rank's GPU, take one distill step, print where tensors were."
    import torch, torch.distributed as dist
    from policyalign.distill import DistillConfig, distill
    from policyalign.parallel import init_distributed
    from policyalign.models import ModelConfig, load_model, local_device
    from policyalign.policy import load_policy
    init_distributed()
    reduced, all_reduce = set(), dist.all_reduce
    def spy(t, *a, **kw): reduced.add(str(t.device)); return all_reduce(t, *a, **kw)
    dist.all_reduce, params, error = spy, [], None
    try:
        model, tok = load_model(ModelConfig(name=folder, device="cuda" if torch.cuda.is_available() else "cpu", quantize="4bit"))
        params = sorted({str(p.device) for p in model.parameters()})
        cfg = DistillConfig(steps=1, batch_size=4, micro_batch_size=2, rollout_batch_size=2, max_new_tokens=8, checkpoint_every=1)
        distill(model, tok, load_policy("general"), REQUESTS, cfg, out_dir=None, progress=False)
    except Exception as e: error = describe(e)
    want = local_device() if torch.cuda.is_available() else "cpu"
    print("PLACEMENT " + json.dumps(dict(rank=dist.get_rank(), want=want, params=params, reduced=sorted(reduced), error=error)), flush=True)
    dist.destroy_process_group()


def placement_verdict(ranks: list[dict]) -> tuple[bool, str]:
    "Pass when two ranks reported, each without error, with its parameters and all-reduced tensors on its own device only."
    ok = len(ranks) == 2 and all(not r["error"] and r["params"] == [r["want"]] and r["reduced"] == [r["want"]] for r in ranks)
    return ok, "; ".join(f"rank {r['rank']} (wants {r['want']}): parameters on {r['params']}, all-reduced tensors on {r['reduced']}"
                         + (f", {r['error']}" if r["error"] else "") for r in sorted(ranks, key=lambda r: r["rank"])) or "no rank reported"


def check_placement(args, report):
    import torch
    report.start()
    if args.device != "cuda" or torch.cuda.device_count() < 2:
        return report.skip("placement", f"needs 2+ CUDA devices for torchrun --nproc_per_node 2; this run has "
                                        f"{torch.cuda.device_count() if args.device == 'cuda' else 0}")
    report("\n## placement: torchrun --nproc_per_node 2, toy shape")
    try:
        folder = shape_model_dir("toy", "cuda", args.workdir)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, "--placement-worker", folder]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        ranks = [json.loads(l.split(" ", 1)[1]) for l in r.stdout.splitlines() if l.startswith("PLACEMENT ")]
        ok, detail = placement_verdict(ranks)
        if r.returncode: detail += f"; torchrun exited {r.returncode}: {r.stderr.strip().splitlines()[-1][:300] if r.stderr.strip() else ''}"
        report.check("placement", ok and r.returncode == 0, detail)
    except Exception as e: report.check("placement", False, describe(e))


# ---------------------------------------------------------------------------------------------------- shapes
def too_small(shape: str, device: str) -> str | None:
    "Why `shape` cannot run on this GPU, or None."
    import torch
    need = MIN_GPU_GIB.get(shape)
    if device != "cuda" or need is None: return None
    have = torch.cuda.get_device_properties(0).total_memory / 2**30
    return None if have >= need else f"needs a 24 GB card ({need} GiB reported or more); this one has {have:.1f} GiB"


def load_shape(shape, args, report):
    "Build (once) and load the random-weight model of `shape`; report what was loaded."
    from policyalign.models import ModelConfig, load_model, resolve_precision
    from policyalign.policy import Prompter
    t0 = time.perf_counter()
    folder = shape_model_dir(shape, args.device, args.workdir)
    pm = PeakMemory(args.device)
    with pm:
        model, tok = load_model(ModelConfig(name=folder, device=args.device, quantize="4bit", precision=args.precision))
    args.precision_used = resolve_precision(args.precision, args.device)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    report(f"\n## {shape}: {model.config.num_hidden_layers} layers, width {model.config.hidden_size}, vocabulary {model.config.vocab_size}; "
           f"4-bit NF4 + LoRA r=16, computing in {args.precision_used}; built and loaded in {time.perf_counter() - t0:.0f} s, "
           f"{mib(pm.peak)} for the loaded model ({n_params / 1e6:.0f}M stored parameters)")
    report(f"   policy '{args.policy}': teacher prompts start with {len(Prompter(tok, args.policy_obj).teacher(''))} tokens; "
           f"answers {args.answer_tokens} tokens (distill), {args.short_answers} (other checks)")
    return model, tok


def run_shape(shape, args, report):
    from policyalign.policy import load_policy
    args.answer_tokens = args.answer_tokens_arg or DEFAULT_ANSWERS[shape]
    checks = [c for c in (args.checks or DEFAULT_CHECKS[shape]) if c in RUN]
    report.shape, args.policy_obj = shape, load_policy(args.policy)
    if not checks: return
    if why := too_small(shape, args.device):
        return report(f"\n## {shape}: SKIP, {why}")
    report.start()
    try: model, tok = load_shape(shape, args, report)
    except Exception as e:                                          # a shape that cannot be built or loaded does not stop the next
        report(f"\n## {shape}"); report.check("build", False, f"building or loading the {shape} shape: {describe(e)}")
        model = None
    if model is None: return free_memory(args.device)              # after the except block, which holds the failed frames
    start = lora_state(model)
    for name in checks:
        report.start()
        try:
            RUN[name](model, tok, args.policy_obj, args, report)
        except Exception as e:                                      # one failing check does not hide the others
            report.check(name, False, describe(e))
        try: drop_ema(model); restore(model, start); model.eval()
        except Exception as e: report.check(f"{name} cleanup", False, describe(e)); break
        free_memory(args.device)
    del model
    free_memory(args.device)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shapes", default=None, help="comma-separated: toy, qwen2.5-1.5b, qwen2.5-7b (default: both Qwen shapes on CUDA, toy on CPU)")
    ap.add_argument("--checks", default=None, help=f"comma-separated subset of {', '.join(CHECKS + ('placement',))} (default: per shape, and placement)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--answer-tokens", dest="answer_tokens_arg", type=int, default=None, help="distill answer length (default 1024 for 1.5B, 512 for 7B, 32 toy)")
    ap.add_argument("--short-answers", type=int, default=None, help="answer length of the other checks (default 128 on CUDA, 8 on CPU)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--policy", default="general")
    ap.add_argument("--workdir", default=None, help="where the random-weight models are built (default: the temp folder)")
    ap.add_argument("--out", default=str(Path(__file__).parent/"results"), help="folder of the results file")
    ap.add_argument("--inject-bug", choices=BUGS, default=None, help="plant a known bug, to test the checks themselves (both break prefix_cache)")
    ap.add_argument("--placement-worker", default=None, help=argparse.SUPPRESS)    # the model folder; set by check_placement
    return ap.parse_args()


def main():
    args = parse_args()
    if args.placement_worker: return placement_worker(args.placement_worker)
    if args.device == "cpu": stable_malloc()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run `python bench/gpu_check.py --device cpu` for the toy-shape check")
    if args.device == "cpu": torch.set_num_threads(min(int(os.environ.get("OMP_NUM_THREADS") or 2), os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)
    shapes = args.shapes.split(",") if args.shapes else (["qwen2.5-1.5b", "qwen2.5-7b"] if args.device == "cuda" else ["toy"])
    args.checks = args.checks.split(",") if args.checks else None
    if bad := [c for c in (args.checks or []) if c not in CHECKS + ("placement",)]: raise SystemExit(f"unknown check(s) {bad}; use {CHECKS + ('placement',)}")
    args.short_answers = args.short_answers or (128 if args.device == "cuda" else 8)
    slug = "cpu" if args.device == "cpu" else torch.cuda.get_device_name(0).lower().replace(" ", "-")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = Report(Path(args.out)/f"gpu_check-{slug}.txt")
    report(f"# policyalign GPU self-check, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    report(f"device: {device_name(args.device)}; {versions()}; commit {commit()}")
    report(f"command: python bench/gpu_check.py {' '.join(sys.argv[1:])}")
    if args.inject_bug: inject_bug(args.inject_bug); report(f"INJECTED BUG: {args.inject_bug} (a check must fail)")
    t0 = time.perf_counter()
    for shape in shapes: run_shape(shape, args, report)
    report.shape = ""
    if args.checks is None or "placement" in args.checks: check_placement(args, report)
    report(f"\n{'all checks passed' if not report.failed else 'FAILED: ' + ', '.join(report.failed)} in {time.perf_counter() - t0:.0f} s")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
