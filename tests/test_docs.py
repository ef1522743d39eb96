"The notebooks' prose names only things that exist: every `policyalign.<module>` or `policyalign.<module>.<name>` it mentions imports."
import importlib, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bpolicyalign\.([a-z_][a-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?")

def mentioned():
    "(notebook, module, name or None) for each mention in a markdown cell."
    for nb in sorted((ROOT/"nbs").rglob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "markdown": continue
            for mod,name in NAME.findall("".join(cell["source"])):
                if mod not in ("github", "io"): yield nb.relative_to(ROOT).as_posix(), mod, name or ""

def test_every_name_the_prose_mentions_exists():
    missing = []
    for where,mod,name in sorted(set(mentioned())):
        try: m = importlib.import_module(f"policyalign.{mod}")
        except ImportError: missing.append(f"{where}: policyalign.{mod}"); continue
        if name and not hasattr(m, name) and not (Path(m.__file__).parent/mod/name).exists(): missing.append(f"{where}: policyalign.{mod}.{name}")
    assert not missing, "\n".join(missing)

def test_the_check_can_fail():
    assert ("x.ipynb", "nosuchmodule", "") not in set(mentioned())
    with pytest.raises(ImportError): importlib.import_module("policyalign.nosuchmodule")
