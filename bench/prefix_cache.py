"""Teacher pass with and without the policy-prefix KV cache (`policyalign.rollout.teacher_hidden`).

The teacher sees `policy (system) + request + answer`; the policy part is the same for every request, so
`PolicyPrefix` computes its keys/values once and the teacher pass only runs the request and answer tokens.
We time `teacher_hidden` uncached and cached, alternating, on 8 requests with answers of about `--answer-tokens`
tokens (fixed token slices of a plain paragraph, different lengths so the batch needs padding), and check that the
teacher log-probabilities over the answer tokens agree (max abs difference, must be <= 5e-4: float32, and the two
paths sum in different orders; 3.6e-5 was seen at 32-token answers, 1.2e-4 at 128 and 512).

When the prefix does not match the prompts, `teacher_hidden` silently runs the uncached path; the script then says
so and fails (exit status 1), since the figure would be meaningless. The student's forward pass (its own prompt, the
same answers, no grad) is timed too: with the cache the policy should cost nothing, so the cached teacher pass should
take about as long. Last line: `ratio cached/uncached=<x> teacher/student=<y>`;
`--toy`: seconds, at toy size (CI).

Run: `python bench/prefix_cache.py [--device cuda] [--answer-tokens 64] [--reps 3]`.
"""
from __future__ import annotations
import argparse, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REQUESTS, add_output_arguments, add_shape_argument, begin, finish, results_name, load, load_bench_model, median, timed

LIMIT = 5e-4   # max |log-prob difference| cached vs uncached

TEXT = ("Thanks for asking. Here is a careful answer that stays general and safe. First, think about what you want "
        "to achieve and who could be affected. Second, check the official guidance that applies where you live, "
        "because rules differ between places. Third, if anything feels risky or unclear, ask a qualified person "
        "before you act, and keep notes of what you did and when. ") * 4


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_shape_argument(ap)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="measured uncached/cached pairs (after one warm-up pair)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policy", default="general")
    add_output_arguments(ap, "prefix_cache")
    args = ap.parse_args()
    if args.toy: args.shape, args.answer_tokens, args.reps = "toy", 8, 1
    begin(args.device, args.threads)
    import torch
    from policyalign.policy import Prompter, load_policy
    from policyalign.rollout import PolicyPrefix, lm_parts, pair_batch, teacher_hidden

    model, tok = load_bench_model(args.device, shape=args.shape)
    policy = load_policy(args.policy)
    pr = Prompter(tok, policy)
    s_p, t_p = [pr.student(r) for r in REQUESTS], [pr.teacher(r) for r in REQUESTS]
    words = tok(TEXT, add_special_tokens=False)["input_ids"]
    words = words * (args.answer_tokens // len(words) + 2)        # the text repeated, so that every length is reached
    answers = [words[i:i + args.answer_tokens - (i % 8)] for i in range(len(REQUESTS))]
    batch = pair_batch(s_p, t_p, answers, tok.pad_token_id)
    dev = model.get_base_model().get_output_embeddings().weight.device
    for f in ("student_ids", "student_mask", "teacher_ids", "teacher_mask", "answer_ids", "answer_mask"):
        setattr(batch, f, getattr(batch, f).to(dev))
    L, mask = batch.answer_ids.shape[1], batch.answer_mask
    print(f"policy {args.policy!r}: {len(tok(policy.system_prompt, add_special_tokens=False)['input_ids'])} tokens of text; "
          f"teacher prompts {min(map(len, t_p))}-{max(map(len, t_p))} tokens; answers {min(map(len, answers))}-{max(map(len, answers))} "
          f"tokens; batch {len(REQUESTS)}")

    prefix = PolicyPrefix(pr)
    print(f"PolicyPrefix: {len(prefix)} tokens, matches the teacher prompts: {prefix.matches(t_p)}")
    if not prefix.matches(t_p):
        raise SystemExit("the policy prefix does not match the teacher prompts: teacher_hidden would run uncached both times")
    dec, head, _ = lm_parts(model)
    _, t_kv, _ = timed(lambda: prefix.get(dec, 0), args.device)
    print(f"computing the prefix's keys/values (once per teacher version; not in the cached timings): {t_kv:.2f} s")

    def logp(h): return torch.log_softmax(head(h[mask]).float(), -1)
    def student_forward():
        with torch.no_grad():
            return dec(input_ids=batch.student_ids, attention_mask=batch.student_mask).last_hidden_state
    variants = {"uncached": lambda: teacher_hidden(model, batch, L, "frozen", None, 0),
                "cached": lambda: teacher_hidden(model, batch, L, "frozen", prefix, 0), "student forward": student_forward}
    times, outs = {k: [] for k in variants}, {}
    for i in range(1 + args.reps):
        for name, fn in variants.items():
            h, dt, _ = timed(fn, args.device)
            outs[name] = h
            print(f"{'warm-up' if i == 0 else 'rep ' + str(i)}: {name:16s} {dt:6.2f} s  load {load()}", flush=True)
            if i: times[name].append(dt)
    with torch.no_grad(): diff = (logp(outs["cached"]) - logp(outs["uncached"])).abs().max().item()
    print(f"max |teacher log-prob difference| cached vs uncached: {diff:.2e} ({'OK' if diff <= LIMIT else 'TOO LARGE'}, limit {LIMIT:g})")
    if diff > LIMIT: raise SystemExit(1)
    t = {k: median(v) for k, v in times.items()}
    print(f"median {t['cached']:.3f} s cached vs {t['uncached']:.3f} s uncached; the student's forward pass over its own prompts "
          f"and the same answers (no policy, no grad) {t['student forward']:.3f} s")
    name = results_name("prefix_cache", args.answer_tokens, 64)
    finish(args, name, f"cached/uncached={t['cached'] / t['uncached']:.3f} teacher/student={t['cached'] / t['student forward']:.3f}")


if __name__ == "__main__":
    main()
