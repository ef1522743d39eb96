"End to end: the CLI runs every stage on a tiny local model, resumes, and refuses to mix changed settings."
import json
from pathlib import Path
import pytest
from conftest import run_cli, TINY_SETS, ROOT

ARTIFACTS = ["config.json", "stages.json", "check.json", "synthesis.jsonl", "heldout.jsonl", "scores.jsonl", "filtered.jsonl", "filtering.png",
             "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "metrics.jsonl", "training.png",
             "eval.json", "report.md", "eval.png", "DATA_CARD.md"]

@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = run_cli("run", "--model", tiny_model_dir, "--out", out, *TINY_SETS)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r

def test_run_writes_every_artifact(finished_run):
    out,r = finished_run
    for a in ARTIFACTS: assert (out/a).exists(), a
    from policyalign.core import RUN_FILES
    named = {f.file.split("/")[0] for f in RUN_FILES.values()}
    assert {p.name for p in out.iterdir() if not p.name.startswith("groups_")} <= named   # core.RUN_FILES names every artifact
    assert f"report: {out/'report.md'}" in r.stdout
    stages = json.loads((out/"stages.json").read_text())
    assert list(stages) == ["check", "synth", "filter", "distill", "eval"]
    assert json.loads((out/"config.json").read_text())["runtime"] == dict(threads=1, deterministic_algorithms=True)
    metrics = [json.loads(l) for l in (out/"metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and all(m["loss"] == m["loss"] and m["loss"] >= 0 for m in metrics)   # finite, non-negative
    rows = [json.loads(l) for l in (out/"synthesis.jsonl").read_text().splitlines()]
    assert {"request", "rule_id", "rule_title", "tactic", "kind", "generator", "seed"} <= set(rows[0])
    ev = json.loads((out/"eval.json").read_text())
    assert {m["variant"] for m in ev["metrics"]} == {"base", "oracle", "aligned"}
    report = (out/"report.md").read_text()
    assert "distill" in report and "| suite |" in report
    assert report.index("## The oracle check") < report.index("## Stages") < report.index("| suite |")
    check = json.loads((out/"check.json").read_text())
    assert check["overall"]["verdict"] in ("clear", "weak", "nothing") and len(check["rules"]) == 9

def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

def test_rerun_resumes_without_redoing(finished_run, tiny_model_dir):
    "A rerun of a finished run does nothing and writes nothing: every file, config.json and report.md included, is byte-identical."
    out,_ = finished_run
    before = _files(out)
    r = run_cli("run", "--out", out)   # the saved config.json is the starting point
    assert r.returncode == 0, r.stderr[-2000:]
    assert "every stage is already done" in r.stderr
    assert _files(out) == before and not (out/"resumes.jsonl").exists()

def test_changed_setting_is_reported_not_mixed(finished_run):
    out,_ = finished_run
    r = run_cli("run", "--out", out, "--lr", "0.5")
    assert r.returncode == 2
    assert "settings of stage 'distill' changed" in r.stderr and "--restart-from distill" in r.stderr
    assert "Traceback" not in r.stderr

def test_adapter_reloads_with_peft(finished_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    out,_ = finished_run
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out/"adapter")
    saved = load_file(out/"adapter"/"adapter_model.safetensors")
    lora_b = [v for k,v in saved.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)   # the adapter was trained
    x = torch.tensor([[5, 6, 7]])
    with torch.no_grad(): assert torch.isfinite(m(x).logits).all()

def test_export_verl(finished_run):
    out,_ = finished_run
    r = run_cli("export-verl", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    from datasets import Dataset
    ds = Dataset.from_parquet(str(out/"verl"/"train.parquet"))
    assert {"prompt", "data_source", "teacher_prompt"} <= set(ds.column_names)
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["teacher_prompt"][0]["role"] == "system"
    assert len(ds) == len((out/"filtered.jsonl").read_text().splitlines())
