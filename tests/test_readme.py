"""README.md mirrors nbs/index.ipynb (Quarto, which nbdev_readme needs, is not available everywhere).
`python tests/test_readme.py` rewrites README.md from the notebook; the tests check it is in step and that its
Python examples run, and that .ci/run runs the README's test command."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _text(x): return "".join(x) if isinstance(x, list) else x

def render_readme() -> str:
    "README.md from index.ipynb: markdown cells as they are, code cells and their printed output as fenced blocks."
    nb = json.loads((ROOT/"nbs"/"index.ipynb").read_text())
    parts = []
    for c in nb["cells"]:
        src = _text(c["source"]).strip()
        if c["cell_type"] == "markdown": parts.append(src.replace("```{mermaid}", "```mermaid")
                                  .replace("](images/", "](nbs/images/").replace("](results/", "](nbs/results/"))
        elif c["cell_type"] == "code" and not src.startswith("#|"):
            parts.append(f"```python\n{src}\n```")
            out = "".join(_text(o.get("text", "")) for o in c.get("outputs", []) if o.get("output_type") == "stream")
            if out.strip(): parts.append(f"```\n{out.rstrip()}\n```")
    body = "\n\n".join(parts)
    return "<!-- This file mirrors nbs/index.ipynb: edit the notebook, then run `python tests/test_readme.py`. -->\n\n" + body + "\n"

def test_readme_mirrors_index():
    assert (ROOT/"README.md").read_text() == render_readme(), "README.md is out of step: run python tests/test_readme.py"

def test_readme_python_blocks_run():
    readme = (ROOT/"README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    runnable = [b for b in blocks if "load_model(\"Qwen" not in b]   # the GPU example runs below, on a tiny model
    assert runnable
    for b in runnable: exec(compile(b, "README.md", "exec"), {})

def test_ci_runs_the_readme_test_command():
    readme = (ROOT/"README.md").read_text()
    cmd = re.findall(r"```bash\n(pip install torch==2.13.0 -e \"\.\[dev\]\".*?)\n```", readme)[0]
    tests_part = cmd.split("&& ", 2)[-1]          # after the two install steps
    assert tests_part in (ROOT/".ci"/"run").read_text()

if __name__ == "__main__":
    (ROOT/"README.md").write_text(render_readme()); print("wrote README.md")

def test_readme_gpu_example_chains_the_stages_on_a_tiny_model(tmp_path, monkeypatch):
    "The README's GPU example, as written, on the tiny model with CPU-sized configs: the stages chain with no glue."
    from functools import partial
    from policyalign.models import add_lora
    from policyalign.testing import policy_sensitive_model, tiny_policy, tiny_tokenizer
    from policyalign import check, synthesis, filtering, distill, evaluation
    readme = (ROOT/"README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "load_model(\"Qwen" in b)
    code = "\n".join(l for l in block.splitlines() if not l.startswith(("from ", "import ")))
    tok = tiny_tokenizer()
    tiny = dict(progress=False)
    ns = dict(policy=tiny_policy(), load_model=lambda name: (add_lora(policy_sensitive_model(tok=tok)), tok),
              check_markdown=check.check_markdown, report_markdown=evaluation.report_markdown,
              oracle_check=partial(check.oracle_check, cfg=check.CheckConfig.tiny(max_new_tokens=4), **tiny),
              synthesize=partial(synthesis.synthesize, cfg=synthesis.SynthConfig.tiny(source="policy", heldout_fraction=0.3), **tiny),
              filter_requests=partial(filtering.filter_requests, cfg=filtering.FilterConfig.tiny(max_new_tokens=4), **tiny),
              distill=partial(distill.distill, cfg=distill.DistillConfig.tiny(steps=2, batch_size=4, max_new_tokens=4), **tiny),
              evaluate=partial(evaluation.evaluate, cfg=evaluation.EvalConfig.tiny(variants=("base", "oracle", "aligned"), suites=(), max_new_tokens=4,
                                                                                   mechanism_tokens=4, cache_dir=str(tmp_path/"cache")), **tiny))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), ns)
    run = tmp_path/"run"
    assert ns["kept"].rows and all(r["kind"] == "harmful" for r in ns["kept"].rows)
    assert ns["trained"].summary["steps"] == 2 and (run/"adapter"/"adapter_model.safetensors").exists()
    assert {"synth-harmful", "synth-benign"} <= set(ns["result"].report["suites"]) and ns["result"].report["mechanism"]["n"] > 0
    from policyalign.core import RUN_FILES
    named = {f.file.split("/")[0] for f in RUN_FILES.values()}
    assert {p.name for p in run.iterdir()} - named == {"groups_synth-harmful.png", "groups_synth-benign.png"}   # groups_{suite}.png
    assert named - {p.name for p in run.iterdir()} == {"check.json", "synthesis.partial.jsonl", "tensorboard", "config.json", "resumes.jsonl",
                                                       "stages.json", "report.md", ".lock", "groups_{suite}.png", "eval_{decoding}.png", "verl"}   # the check's, the pipeline's, the export's
