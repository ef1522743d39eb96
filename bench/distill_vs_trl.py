"""One on-policy self-distillation step: policyalign's `distill_step` against TRL's SDFT trainer, alternating A B A B.

Both sides start from the same embedded SmolLM2-135M-Instruct (float32 on CPU, bf16 on CUDA), a fresh LoRA adapter
(r=16, alpha=32, no dropout, all linear layers), the same 8 requests, the same policy as privileged context, answers of
exactly `--answer-tokens` tokens (EOS suppressed by `min_new_tokens` on both sides, sampled at temperature 1), the
student's top-256 support, reverse KL, the base model (adapter off) as a frozen teacher, AdamW (lr 1e-4, wd 0.01),
gradient clipping at 1.0, no gradient checkpointing and no mixed precision on either side.

Differences that the TRL API does not let us remove (see bench/README.md):
- TRL puts the privileged context into the last *user* turn (`teacher_prompt_template`); the chat template then adds
  its default system message. policyalign puts the policy in the *system* message. TRL's teacher prompt is therefore
  ~15 tokens longer, and, because the policy follows the request, no prefix can be shared between teacher prompts.
- TRL averages the loss per answer, then over answers; policyalign sums over tokens and divides by the token count
  (equal here: every answer has the same length).
- One TRL "step" is what `Trainer.train` does per optimizer step with gradient_accumulation_steps=1:
  `training_step` (rollout, teacher prompt building, teacher forward, student forward+backward) + clip + AdamW step.
  Trainer's logging/callback bookkeeping outside `training_step` is not timed.

Each step is also split into rollout, teacher forward, optimiser step and the rest (the student's forward and backward,
the loss, clipping): `_common.time_parts` times policyalign's `rollout`, `teacher_hidden` and `optimizer.step`, and
TRL's `_generate`, its `_forward_logits` called without grad (the teacher) and `optimizer.step`.
Prints the per-step times, parts and peak memory of each side, then, last line: `ratio step_time=<x> peak_mem=<y>`
(policyalign / TRL; medians). Run: `python bench/distill_vs_trl.py [--device cuda] [--answer-tokens 64] [--steps 5]`;
`--toy`: seconds, at toy size (CI); without TRL installed, policyalign's side alone.
`--engine vllm` (in a venv with the vllm extra): policyalign samples with its vLLM engine (`policyalign.engine`, the
merged adapter pushed into vLLM before each rollout, timed as part of the rollout); TRL is first tried with its own
vLLM path (`use_vllm=True, vllm_mode="colocate"`), and where that fails the error is printed and TRL runs with
transformers' `generate`, its best configuration that runs here.
"""
from __future__ import annotations
import argparse, os, sys, tempfile, warnings
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, add_output_arguments, add_shape_argument, begin, finish, results_name, load, load_bench_model, median, mib, policyalign_parts, stable_malloc, time_parts, timed


def policyalign_side(args, policy):
    from policyalign.distill import DistillConfig, distill_step, make_optimizer
    from policyalign.policy import Prompter
    from policyalign.rollout import PolicyPrefix
    model, tok = load_bench_model(args.device, shape=args.shape)
    if args.engine == "vllm":
        from policyalign.engine import start_engine
        from policyalign.models import model_name
        start_engine(model, tok, "vllm", model_name(model))
    cfg = DistillConfig(steps=10_000, batch_size=len(REQUESTS), micro_batch_size=len(REQUESTS), rollout_batch_size=len(REQUESTS),
                        max_new_tokens=args.answer_tokens, min_new_tokens=args.answer_tokens, top_k=args.top_k, divergence=args.divergence, teacher="frozen",
                        lr=1e-4, weight_decay=0.01, max_grad_norm=1.0, prefix_cache=not args.no_prefix_cache, seed=0)
    opt, sched = make_optimizer(model, cfg)
    prompter = Prompter(tok, policy)
    prefix = PolicyPrefix(prompter) if cfg.prefix_cache else None
    t_p = [prompter.teacher(r) for r in REQUESTS]
    state = dict(step=0, teacher_len=len(t_p[0]), prefix=f"{len(prefix)} tokens, applies: {prefix.matches(t_p)}" if prefix else "off",
                 engine=getattr(model, "policyalign_engine", None))
    def step():
        m = distill_step(model, tok, prompter, REQUESTS, cfg, opt, sched, state["step"], prefix)
        state["step"] += 1
        return m
    return step, state, policyalign_parts(opt)


def trl_vllm_error(args, policy) -> str|None:
    "Build TRL's SDFT trainer with its own vLLM path and take one step; the error it stops with (None: it ran)."
    try:
        step, _, _ = trl_side(args, policy, use_vllm=True)
        step()
    except Exception as e: return f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"


def trl_side(args, policy, use_vllm:bool=False):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer
    base, tok = load_bench_model(args.device, lora=False, shape=args.shape)
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    rows = [{"prompt": [{"role": "user", "content": r}], "privileged_context": policy.system_prompt} for r in REQUESTS]
    targs = SDFTConfig(output_dir=tempfile.mkdtemp(prefix="sdft-bench-"), per_device_train_batch_size=len(REQUESTS),
                       gradient_accumulation_steps=1, num_generations=1, max_completion_length=args.answer_tokens,
                       max_prompt_length=None, temperature=1.0, top_p=1.0, top_k=0,
                       generation_kwargs={"min_new_tokens": args.answer_tokens},
                       distillation_mode="topk_logits", distillation_topk=args.top_k, distillation_alpha=1.0,
                       distillation_add_tail=False, distillation_is_clip=None, teacher_model_kind="base",
                       learning_rate=1e-4, weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="constant",
                       gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=args.device == "cpu",
                       report_to="none", save_strategy="no", shuffle_dataset=False, seed=0, disable_tqdm=True,
                       **(dict(use_vllm=True, vllm_mode="colocate") if use_vllm else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SDFTTrainer(model=base, args=targs, train_dataset=Dataset.from_list(rows), processing_class=tok,
                              peft_config=peft_cfg)
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    teacher_ids = trainer._tokenize_prompts(trainer.teacher_context_builder.select_generation_prompts(
        [rows[0]["prompt"]], [rows[0]["privileged_context"]]))[0]
    state = dict(step=0, teacher_len=len(teacher_ids), trainable=sum(p.numel() for p in params))
    def step():
        torch.manual_seed(state["step"])
        loss = trainer.training_step(model, rows, None)   # rollout + teacher + student fwd/bwd, like Trainer.train
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        trainer.optimizer.step(); trainer.lr_scheduler.step(); trainer.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        return dict(loss=loss.item(), answer_tokens=trainer._metrics["train"]["completions/mean_length"][-1])
    teacher_or_student = lambda: "student" if torch.is_grad_enabled() else "teacher"   # the teacher's forward runs without grad
    return step, state, [(trainer, "_generate", "rollout"), (trainer, "_forward_logits", teacher_or_student),
                         (trainer.optimizer, "step", "optimiser")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_shape_argument(ap)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="measured steps per side (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--policy", default="general")
    ap.add_argument("--divergence", default="topk_reverse_kl_renorm",
                    help="policyalign divergence; topk_reverse_kl_renorm is TRL's topk_logits objective with add_tail=False")
    ap.add_argument("--no-prefix-cache", action="store_true")
    ap.add_argument("--no-trl", action="store_true", help="only run policyalign's side")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="policyalign's sampling engine")
    add_output_arguments(ap, "distill_vs_trl")
    args = ap.parse_args()
    if args.toy: args.shape, args.answer_tokens, args.steps, args.warmup = "toy", 4, 1, 0
    if args.device == "cpu": stable_malloc()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    results = results_name("distill_vs_trl" + ("-vllm" if args.engine == "vllm" else ""), args.answer_tokens, 64)
    begin(args.device, args.threads)
    from policyalign.policy import load_policy
    policy = load_policy(args.policy)

    sides = {"policyalign": policyalign_side(args, policy)}
    skip = "--no-trl given" if args.no_trl else None
    if not skip and args.engine == "vllm":
        err = trl_vllm_error(args, policy)
        print(f"TRL SDFT with use_vllm=True, vllm_mode='colocate': {'ran' if err is None else 'fails: ' + err}"
              + ("" if err is None else "; TRL runs with transformers' generate below"))
    if not skip:
        try: sides["trl"] = trl_side(args, policy)
        except ImportError as e: skip = f"TRL's SDFT trainer is not importable ({e}); pip install -e '.[bench]'"
    if skip: print(f"skipping TRL: {skip}")
    for name, (_, st, _) in sides.items(): print(f"{name}: teacher prompt for request 0 = {st['teacher_len']} tokens; prefix cache: {st.get('prefix', 'n/a')}")

    times, peaks, parts = {k: [] for k in sides}, {k: [] for k in sides}, {k: [] for k in sides}
    for i in range(args.warmup + args.steps):
        for name, (fn, _, patches) in sides.items():          # A B A B ...
            (m, _, part), dt, peak = timed(lambda: time_parts(fn, patches, args.device), args.device)
            tag = "warm-up" if i < args.warmup else "step"
            print(f"{tag} {i}: {name:11s} {dt:7.2f} s  peak +{mib(peak):>9s}  answer tokens {m['answer_tokens']:.0f}  "
                  f"loss {m['loss']:.4f}  load {load()}  (" + ", ".join(f"{k} {v:.2f}" for k, v in part.items()) + ")", flush=True)
            if i >= args.warmup: times[name].append(dt); peaks[name].append(peak); parts[name].append(part)

    print("where a step's time goes (median seconds): " + "; ".join(f"{name}: " + ", ".join(
        f"{k} {median([p[k] for p in parts[name]]):.2f}" for k in ("rollout", "teacher", "student", "optimiser")) for name in sides))
    print("  (student: its forward and backward, the loss, clipping and the rest of the step)")
    if eng := sides["policyalign"][1].get("engine"):
        n = args.warmup + args.steps
        print(f"policyalign's vLLM engine: {eng.syncs} weight syncs in {eng.sync_seconds:.2f} s over {n} steps "
              f"({eng.sync_seconds / n:.2f} s a step, inside the rollout times above); started in {eng.start_seconds:.1f} s")
    for name in sides:
        print(f"{name}: median step {median(times[name]):.2f} s, median peak +{mib(median(peaks[name]))} "
              f"({args.steps} steps, {len(REQUESTS)} requests x {args.answer_tokens} answer tokens)")
    if "trl" in sides:
        pairs = [a / b for a, b in zip(times["policyalign"], times["trl"])]
        print(f"per-pair time ratios: {' '.join(f'{r:.2f}' for r in pairs)}")
        finish(args, results, f"step_time={median(times['policyalign']) / median(times['trl']):.3f} "
                           f"peak_mem={median(peaks['policyalign']) / median(peaks['trl']):.3f}")
    else: finish(args, results, f"step_time=n/a (TRL not run) policyalign_seconds={median(times['policyalign']):.3f}")


if __name__ == "__main__":
    main()
