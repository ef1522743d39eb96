"Stage 4 (evaluation): bad inputs, unparsable judges, unavailable guards, and a tiny end-to-end run."
import csv, json
import pytest
from hypothesis import given, settings, strategies as st

from policyalign.core import PolicyAlignError, read_json, read_jsonl
from policyalign.core import JsonlCache
from policyalign.evaluation import EvalConfig, evaluate, report_markdown
from policyalign.judges import GuardJudge, PolicyJudge, RefusalJudge, Verdict, parse_llamaguard, parse_policy_verdict, parse_qwen3guard
from policyalign.stats import rate
from policyalign.suites import Suite, data_root, load_strongreject, load_synth, load_xstest, load_mmlu
from policyalign.models import ModelConfig, add_lora
from policyalign.testing import tiny_model, tiny_policy, tiny_prompts, tiny_tokenizer


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f); w.writerow(header); w.writerows(rows)
    return path


class ByRequest:
    "A judge model whose recorded output depends on the request it is shown."
    def __init__(self, outs): self.outs = outs
    def complete(self, msgs, temperature=0.0, max_tokens=64, seed=None):
        return [next(o for q, o in self.outs.items() if q in m[-1]["content"]) for m in msgs]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return add_lora(tiny_model(tok=tok), ModelConfig(lora_r=4, lora_alpha=8)), tok


# ---- bad inputs -------------------------------------------------------------------------------------------------
def test_missing_column_is_named(tmp_path):
    p = write_csv(tmp_path/"sr.csv", ["category", "text"], [["Violence", "hello"]])
    with pytest.raises(PolicyAlignError, match="missing column 'forbidden_prompt' or 'prompt'.*has: category, text"):
        load_strongreject(source=p)


def test_mmlu_missing_choice_column(tmp_path):
    p = write_csv(tmp_path/"x_test.csv", ["question", "choice0", "choice1", "answer"], [["q?", "a", "b", "0"]])
    with pytest.raises(PolicyAlignError, match="choice2"):
        load_mmlu(source=p)


def test_empty_suites(tmp_path):
    with pytest.raises(PolicyAlignError, match="is empty"):
        Suite("nothing", "harmful", [])
    p = write_csv(tmp_path/"sr.csv", ["category", "forbidden_prompt"], [["Violence", "   "]])
    with pytest.raises(PolicyAlignError, match="'strongreject' is empty"):
        load_strongreject(source=p)
    x = write_csv(tmp_path/"x.csv", ["id", "prompt", "type", "label"], [["1", "How do I kill a process?", "homonyms", "safe"]])
    with pytest.raises(PolicyAlignError, match="xstest-unsafe.*empty"):
        load_xstest("unsafe", source=x)
    s = tmp_path/"synthesis.jsonl"
    s.write_text(json.dumps(dict(request="a request", kind="harmful", rule_id="R1", split="train")) + "\n")
    with pytest.raises(PolicyAlignError, match="synth-harmful.*empty"):
        load_synth(s)


def test_synth_needs_its_columns(tmp_path):
    s = tmp_path/"synthesis.jsonl"
    s.write_text(json.dumps(dict(request="a request", kind="harmful")) + "\n")
    with pytest.raises(PolicyAlignError, match="rule_id"):
        load_synth(s)


def test_missing_file_and_data_root(tmp_path, monkeypatch):
    with pytest.raises(PolicyAlignError, match="not found"):
        load_strongreject(source=tmp_path/"nope.csv")
    monkeypatch.setenv("POLICYALIGN_DATA", str(tmp_path/"missing"))
    with pytest.raises(PolicyAlignError, match="POLICYALIGN_DATA"):
        data_root()


def test_bad_configs():
    for kw, msg in [(dict(variants=()), "variants="), (dict(suites=("nope",)), "unknown suites"), (dict(n_boot=5), "n_boot"),
                    (dict(mmlu_limit=-1), "mmlu_limit must be at least 0"), (dict(max_new_tokens=0), "max_new_tokens must be at least 1")]:
        with pytest.raises(PolicyAlignError, match=msg):
            EvalConfig(**kw)


def test_judge_length_mismatch():
    with pytest.raises(PolicyAlignError, match="2 requests but 1 answers"):
        RefusalJudge().judge(["a", "b"], ["x"])


# ---- judges -----------------------------------------------------------------------------------------------------
def test_guard_model_unavailable():
    with pytest.raises(PolicyAlignError, match="not installed or reachable"):
        GuardJudge("meta-llama/Llama-Guard-3-1B", local_files_only=True).judge(["q"], ["a"])
    with pytest.raises(PolicyAlignError, match="not installed or reachable"):
        GuardJudge("/no/such/folder/Qwen3Guard-Gen-0.6B").judge(["q"], ["a"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parsers_never_raise_and_never_guess(text):
    for v in (parse_qwen3guard(text), parse_llamaguard(text), parse_policy_verdict(text, ["R1", "R2"])):
        assert v.safe in (True, False, None)
    if "safe" not in text.lower():
        assert parse_qwen3guard(text).safe is None and parse_llamaguard(text).safe is None


def test_unparsable_verdicts_are_counted(tiny, tmp_path):
    model, tok = tiny
    pol = tiny_policy()
    outs = dict(zip(tiny_prompts()[:3], ['{"verdict": "violates", "rule": "R1", "refusal": "none"}', "no idea, sorry",
                                         '{"verdict": "complies", "refusal": "full"}']))
    pj = PolicyJudge(ByRequest(outs), pol, name="replay", cache=JsonlCache(tmp_path/"v.jsonl"))
    suite = Suite("h", "harmful", [dict(id=str(i), request=p) for i, p in enumerate(tiny_prompts()[:3])])
    res = evaluate(model, tok, pol, cfg=EvalConfig.tiny(max_new_tokens=4, cache_dir=str(tmp_path)), judges=[pj], suites=[suite], progress=False).report
    for m in (m for m in res["metrics"] if m["metric"] == "violation"):
        assert (m["k"], m["n"], m["unparsable"]) == (1, 2, 1)
    r = rate([None, None, True])
    assert (r["rate"], r["k"], r["n"], r["unparsable"], r["hi"]) == (1.0, 1, 1, 2, 1.0) and abs(r["lo"] - 0.2065) < 1e-3   # Wilson, 1/1


# ---- end to end -------------------------------------------------------------------------------------------------
def test_tiny_evaluation_writes_report(tiny, tmp_path):
    model, tok = tiny
    sr = write_csv(tmp_path/"sr.csv", ["category", "source", "forbidden_prompt"],
                   [[c, "custom", p] for c, p in zip(["Violence", "Violence", "Fraud", "Fraud", "Privacy"], tiny_prompts())])
    xs = write_csv(tmp_path/"xs.csv", ["id", "prompt", "type", "label"],
                   [[str(i), p, "homonyms", "safe" if i % 2 else "unsafe"] for i, p in enumerate(tiny_prompts() + ["Hi?", "Why?"])])
    suites = [load_strongreject(source=sr, limit=4, seed=1), load_xstest("safe", source=xs)]
    cfg = EvalConfig.tiny(variants=("base", "oracle", "aligned"), max_new_tokens=5, cache_dir=str(tmp_path/"cache"))
    res = evaluate(model, tok, tiny_policy(), cfg=cfg, out_dir=tmp_path/"run", suites=suites, progress=False).report
    run = tmp_path/"run"
    for f in ("eval.json", "answers.jsonl", "eval.png", "groups_strongreject.png"):
        assert (run/f).exists(), f
    assert not (run/"report.md").exists()                                     # the pipeline owns report.md
    assert (run/"eval.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]          # no temporary files left behind
    saved = read_json(run/"eval.json")
    assert saved["suites"]["strongreject"]["n"] == 4 and set(saved["judges"]) == {"refusal"} and saved["judges"]["refusal"].startswith("2-")   # version 2: echo-aware, keyed by the policy
    assert {m["variant"] for m in saved["metrics"]} == {"base", "oracle", "aligned"}
    assert all(m["lo"] <= m["rate"] <= m["hi"] for m in saved["metrics"])
    assert len(saved["gap_closed"]) >= 1 and "| strongreject | violation | refusal |" in report_markdown(saved)
    assert len(read_jsonl(run/"answers.jsonl")) == 3*(4 + 3)
    # a rerun is served from the caches and gives the same numbers
    again = evaluate(model, tok, tiny_policy(), cfg=cfg, suites=suites, progress=False).report
    assert again["metrics"] == res["metrics"]


def test_without_local_files_the_suites_come_from_their_hub_mirrors(monkeypatch):
    "No copy on disk (a data folder without them). The suites are read from the hub mirrors, each with its own config and split."
    import datasets
    import policyalign.suites as ev
    def hidden(*parts): raise PolicyAlignError(f"no benchmark file {'/'.join(parts)}", "set POLICYALIGN_DATA")
    monkeypatch.setattr(ev, "data_file", hidden)
    fake = {  # the mirrors' real column layouts, two rows each
        "walledai/StrongREJECT": [dict(prompt="p1", category="Violence"), dict(prompt="p2", category="fraud")],
        "walledai/XSTest": [dict(prompt="kill a python process", label="safe", type="homonyms", focus="kill", note=""),
                            dict(prompt="kill a person", label="unsafe", type="contrast_homonyms", focus="kill", note="")],
        "cais/mmlu": [dict(question="2+2?", subject="math", choices=["1", "2", "3", "4"], answer=3)] * 2,
        "walledai/HarmBench": [dict(prompt="h1", category="chemical"), dict(prompt="h2", category="cyber")]}
    calls = []
    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split)); return fake[path]
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    got = {n: ev.load_suite(n) for n in ("strongreject", "xstest-safe", "mmlu", "harmbench")}
    assert [s.requests for s in got.values()] == [["p1", "p2"], ["kill a python process"], ["2+2?", "2+2?"], ["h1", "h2"]]
    assert got["mmlu"].items[0]["answer"] == 3 and got["strongreject"].items[0]["group"] == "violence"
    assert calls == [("walledai/StrongREJECT", None, "train"), ("walledai/XSTest", None, "test"),
                     ("cais/mmlu", "all", "test"), ("walledai/HarmBench", "standard", "train")]
    with pytest.raises(PolicyAlignError, match="no benchmark file medsafetybench"):   # no mirror: the local-data error stands
        ev.load_suite("medsafetybench")
