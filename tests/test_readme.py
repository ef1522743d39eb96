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
        if c["cell_type"] == "markdown": parts.append(src.replace("```{mermaid}", "```mermaid").replace("](images/", "](nbs/images/"))
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
    runnable = [b for b in blocks if "load_model(\"Qwen" not in b]   # the GPU example is shown, not run
    assert runnable
    for b in runnable: exec(compile(b, "README.md", "exec"), {})

def test_ci_runs_the_readme_test_command():
    readme = (ROOT/"README.md").read_text()
    cmd = re.findall(r"```bash\n(pip install torch==2.13.0 -e \"\.\[dev\]\".*?)\n```", readme)[0]
    tests_part = cmd.split("&& ", 2)[-1]          # after the two install steps
    assert tests_part in (ROOT/".ci"/"run").read_text()

if __name__ == "__main__":
    (ROOT/"README.md").write_text(render_readme()); print("wrote README.md")
