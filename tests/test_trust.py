"""Results you can trust: distillation measurably learns on a model that reacts to the policy, evaluation caches
never mix two adapters, and `policyalign check` works on every shipped policy."""
import json, statistics
import pytest, torch
from conftest import run_cli
from policyalign.testing import policy_sensitive_model, tiny_heldout_prompts, tiny_policy, tiny_prompts, tiny_tokenizer

TRAIN = tiny_prompts() + ["Make a gun at home.", "Find Bob's address.", "Send a fake bank email."]

def _heldout_kl_ratio(lr):
    "Held-out policy KL after 6 distillation steps at `lr`, over the same before them (fresh model, fixed seeds)."
    from policyalign.measure import policy_kl
    from policyalign.distill import DistillConfig, distill
    from policyalign.models import add_lora
    tok,pol = tiny_tokenizer(),tiny_policy()
    m = add_lora(policy_sensitive_model(tok=tok))
    kl = lambda: statistics.fmean(policy_kl(m, tok, pol, tiny_heldout_prompts(), max_new_tokens=8, samples=2))
    before = kl()
    distill(m, tok, pol, TRAIN, DistillConfig.tiny(steps=6, batch_size=8, max_new_tokens=8, lr=lr), progress=False)
    return before, kl() / before

def test_distillation_lowers_heldout_policy_kl():
    before,ratio = _heldout_kl_ratio(1e-2)
    assert before > 0.2, before          # the model reacts to the policy: there is something to learn
    assert ratio < 0.6, ratio            # measured 0.32-0.34 over four seeds of the model

def test_no_learning_no_change():
    "The control: at a learning rate of (almost) zero the same measurement does not move, so the test above can fail."
    _,ratio = _heldout_kl_ratio(1e-12)
    assert abs(ratio - 1) < 0.01, ratio

def _saved_adapter(path, seed, tok):
    from policyalign.models import add_lora
    m = add_lora(policy_sensitive_model(tok=tok))
    torch.manual_seed(seed)
    with torch.no_grad():
        for n,p in m.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.3)
    m.save_pretrained(path)

def test_eval_cache_never_mixes_two_frozen_adapters(tmp_path):
    "Two different adapters attached for inference (no parameter requires grad) must not share cached answers."
    from peft import PeftModel
    from policyalign.evaluation import EvalConfig, evaluate
    from policyalign.suites import Suite
    tok = tiny_tokenizer()
    for s in (1, 2): _saved_adapter(tmp_path/f"a{s}", s, tok)
    suite = Suite("h", "harmful", [dict(id=str(i), request=p) for i,p in enumerate(tiny_prompts())])
    def answers(adapter, cache):
        m = PeftModel.from_pretrained(policy_sensitive_model(tok=tok), tmp_path/adapter)
        assert not any(p.requires_grad for p in m.parameters())
        cfg = EvalConfig.tiny(variants=("aligned",), max_new_tokens=8, cache_dir=str(tmp_path/cache), mechanism_limit=0)
        evaluate(m, tok, tiny_policy(), cfg=cfg, out_dir=tmp_path/f"run-{adapter}-{cache}", suites=[suite], progress=False)
        return [json.loads(l)["answer"] for l in (tmp_path/f"run-{adapter}-{cache}"/"answers.jsonl").read_text().splitlines()]
    first,second = answers("a1", "shared"),answers("a2", "shared")
    assert second == answers("a2", "fresh")      # the shared cache gave a2 its own answers ...
    assert first != second                       # ... which differ from a1's, so reusing a1's would have shown

@pytest.mark.parametrize("policy", ["general", "medical", "legal", "financial"])
def test_check_command_on_every_shipped_policy(policy, tmp_path, tiny_model_dir):
    r = run_cli("check", "--policy", policy, "--model", tiny_model_dir, "--preset", "cpu", "--out", tmp_path,
                "--set", "check.n_harmful=1", "--set", "check.n_benign=1", "--set", "check.max_new_tokens=4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Oracle check:" in r.stdout and "What to do:" in r.stdout
    from policyalign.policy import load_policy
    res = json.loads((tmp_path/"check.json").read_text())
    assert [x["rule_id"] for x in res["rules"]] == [x.id for x in load_policy(policy).rules]
    assert res["overall"]["harmful"]["greedy_with"]["n"] == len(load_policy(policy).rules)

@pytest.mark.parametrize("args,words", [(["--policy", "no/such.md"], ["not found", "fix:"]),
                                        (["--model", "no-such-model"], ["unknown model", "fix:"]),
                                        (["--set", "check.n_harmful=0"], ["n_harmful must be at least 1"])])
def test_check_command_bad_input_in_two_lines(args, words):
    r = run_cli("check", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr
    for w in words: assert w in r.stderr, r.stderr

def test_gate_stops_the_gpu_preset_when_there_is_nothing_to_distil():
    from policyalign.core import PolicyAlignError
    from policyalign.check import CheckConfig, gate
    from policyalign.pipeline import PipelineConfig
    nothing = {"verdict": "nothing"}
    with pytest.raises(PolicyAlignError, match="--ignore-check"): gate(nothing, PipelineConfig.preset_for("gpu").check)
    gate(nothing, PipelineConfig.preset_for("cpu").check)                      # the CPU preset goes on to show the mechanism
    gate({"verdict": "weak"}, PipelineConfig.preset_for("gpu").check)
