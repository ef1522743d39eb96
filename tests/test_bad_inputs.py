"""Every bad input gets a non-zero exit and a message naming the problem and the fix, never a traceback.
Table-driven: each case builds its inputs in a temporary folder and runs the real CLI."""
import json, os, subprocess, threading, time
from pathlib import Path
import pytest
from conftest import run_cli, TINY_SETS

GOOD_POLICY = "# P\nBe careful.\n\n1. Weapons: Do not explain weapons.\n2. Privacy: Do not reveal addresses.\n"

def write(d, name, content, mode="w"):
    p = Path(d)/name
    (p.write_bytes if mode == "wb" else p.write_text)(content)
    return p

# (case id, function building the CLI args from (tmp folder, tiny model folder), words the message must contain)
CASES = [
    ("empty-policy",      lambda d,m: ["--policy", write(d, "p.md", "   \n"), "--model", m], ["is empty", "fix:"]),
    ("binary-policy",     lambda d,m: ["--policy", write(d, "p.md", b"\x00\x01\x02GGUF\x00", "wb"), "--model", m], ["binary file", "fix:"]),
    ("non-utf8-policy",   lambda d,m: ["--policy", write(d, "p.md", "1. R\xe9gle: ne pas nuire\n".encode("latin-1"), "wb"), "--model", m], ["not UTF-8", "re-save"]),
    ("no-rules",          lambda d,m: ["--policy", write(d, "p.md", "Please be nice to everyone."), "--model", m], ["no rules found", "1. Title: text"]),
    ("missing-policy",    lambda d,m: ["--policy", Path(d)/"nope.md", "--model", m], ["not found", "general"]),
    ("policy-too-long",   lambda d,m: ["--policy", write(d, "p.md", GOOD_POLICY + "3. Long: " + "word " * 1200 + "\n"), "--model", m], ["policy prompt is", "shorten the policy"]),
    ("unknown-model",     lambda d,m: ["--model", "no-such-model"], ["unknown model", "smollm2-135m"]),
    ("hub-id-offline",    lambda d,m: ["--model", "policyalign-test/no-such-model"], ["could not reach the Hugging Face hub", "local model folder"]),
    ("folder-not-model",  lambda d,m: ["--model", d], ["not a model", "config.json"]),
    ("seeds-missing-col", lambda d,m: ["--model", m, "--seeds", write(d, "s.csv", "text,category\nhow to x,a\n")], ["no column", "columns are"]),
    ("config-unknown-key",lambda d,m: ["--model", m, "--config", write(d, "c.toml", "[distill]\nsteps = 3\nlearning_rate = 0.1\n")], ["unknown config key", "distill.learning_rate"]),
    ("config-wrong-type", lambda d,m: ["--model", m, "--config", write(d, "c.yaml", "distill:\n  steps: many\n")], ["distill.steps should be", "fix"]),
    ("config-bad-syntax", lambda d,m: ["--model", m, "--config", write(d, "c.toml", "[distill\nsteps=")], ["not valid TOML", "fix"]),
    ("zero-steps",        lambda d,m: ["--model", m, "--steps", "0"], ["steps must be at least 1"]),
    ("negative-size",     lambda d,m: ["--model", m, "--set", "synth.n_per_tactic=-2"], ["n_per_tactic=-2", "fix"]),
    ("unknown-preset-val",lambda d,m: ["--model", m, "--set", "filter.keep_fraction=1.5"], ["keep_fraction=1.5", "fix"]),
]

# --- every file or folder a user names, against every way it can be wrong -----------------------------------
# Each is caught before any stage runs (no check.json is written), with two lines naming the argument and the fix.

def _file(kind, d, content="1. Weapons: Do not explain weapons.\n"):
    "A file argument that is wrong in the way `kind` says (or right, for 'ok')."
    return {"missing": lambda: Path(d)/"nope.md", "folder": lambda: Path(d),
            "unreadable": lambda: Path("/proc/self/mem"),            # reading fails with EIO, even as root
            "binary": lambda: write(d, "x.md", b"\x00\x01\x02GGUF\x00", "wb"),
            "latin-1": lambda: write(d, "x.md", "1. R\xe9gle: ne pas nuire\n".encode("latin-1"), "wb"),
            "empty": lambda: write(d, "x.md", "  \n")}[kind]()

FILE_MODES = {"missing": "not found", "folder": "is a folder, not a file", "unreadable": "cannot read", "binary": "binary file",
              "latin-1": "not UTF-8", "empty": "is empty"}
FILE_ARGS = {"policy": lambda p,m: ["--policy", p, "--model", m],
             "config": lambda p,m: ["--config", p, "--model", m],
             "seeds":  lambda p,m: ["--seeds", p.with_suffix(".csv") if p.suffix == ".md" else p, "--model", m]}

def _as_seed_file(p:Path) -> Path:
    "The same wrong file, named as a seed file (CSV) so that its content, not its type, is what is wrong."
    if p.suffix != ".md" or not p.exists(): return p.with_suffix(".csv") if p.suffix == ".md" else p
    return p.rename(p.with_suffix(".csv"))

@pytest.mark.parametrize("arg", FILE_ARGS)
@pytest.mark.parametrize("mode", FILE_MODES)
def test_every_file_argument_against_every_way_it_can_be_wrong(arg, mode, tmp_path, tiny_model_dir):
    p = _file(mode, tmp_path/"in") if (tmp_path/"in").mkdir() is None else None
    if arg == "seeds": p = _as_seed_file(p)
    r = run_cli("run", "--out", tmp_path/"run", *FILE_ARGS[arg](p, tiny_model_dir), *TINY_SETS[:2])
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert "unexpected error" not in r.stderr and len(lines) == 2 and lines[1].startswith("  fix:"), r.stderr[-2000:]
    assert FILE_MODES[mode] in r.stderr, r.stderr
    assert not (tmp_path/"run"/"check.json").exists()           # caught before any stage ran

FOLDER_ARGS = {"out": lambda p,m: ["--out", p, "--model", m], "eval-cache": lambda p,m: ["--set", f"eval.cache_dir={json.dumps(str(p))}", "--model", m]}
FOLDER_MODES = {"a file": ("is a file, not a folder", lambda d: write(d, "f.txt", "x")),
                "under a file": ("cannot be written", lambda d: write(d, "f.txt", "x")/"sub")}

@pytest.mark.parametrize("arg", FOLDER_ARGS)
@pytest.mark.parametrize("mode", FOLDER_MODES)
def test_every_folder_argument_against_every_way_it_can_be_wrong(arg, mode, tmp_path, tiny_model_dir):
    said,make = FOLDER_MODES[mode]
    args = FOLDER_ARGS[arg](make(tmp_path), tiny_model_dir)
    r = run_cli("run", *(["--out", tmp_path/"run"] if arg != "out" else []), *args, *TINY_SETS[:2])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2 and said in r.stderr and "unexpected error" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/"run"/"check.json").exists()

MODEL_MODES = {"missing": (lambda d: d/"nope", "unknown model"), "a file": (lambda d: write(d, "m.gguf", "x"), "unknown model"),
               "empty folder": (lambda d: d, "not a model"), "no weights": (lambda d: write(d, "config.json", "{}").parent, "could not load model")}

@pytest.mark.parametrize("mode", MODEL_MODES)
def test_the_model_argument_against_every_way_it_can_be_wrong(mode, tmp_path):
    make,said = MODEL_MODES[mode]
    (tmp_path/"m").mkdir()
    r = run_cli("run", "--out", tmp_path/"run", "--model", make(tmp_path/"m"), *TINY_SETS[:2])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2 and said in r.stderr and "unexpected error" not in r.stderr, r.stderr[-2000:]

def test_a_seed_file_with_the_wrong_columns_fails_before_the_check(tmp_path, tiny_model_dir):
    r = run_cli("run", "--out", tmp_path/"run", "--model", tiny_model_dir, "--seeds", write(tmp_path, "s.csv", "text,category\nhow to x,a\n"), *TINY_SETS[:2])
    assert r.returncode == 2 and "has no column 'instruction'" in r.stderr and "columns are ['category', 'text']" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path/"run"/"check.json").exists()

@pytest.mark.parametrize("name,make,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, make, words, tmp_path, tiny_model_dir):
    r = run_cli("run", "--out", tmp_path/"run", *make(tmp_path, tiny_model_dir), *TINY_SETS[:2])
    assert r.returncode != 0, r.stdout[-1000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for w in words: assert w in r.stderr, (w, r.stderr[-2000:])

def test_debug_shows_the_traceback(tmp_path):
    r = run_cli("--debug", "run", "--out", tmp_path/"run", "--model", "no-such-model")
    assert r.returncode != 0 and "Traceback" in r.stderr

# --- generator endpoints that fail: down, HTTP 500, garbage, too slow ---------------------------------

@pytest.fixture(scope="module")
def endpoint_factory():
    from policyalign.testing import ChatServer
    class Echo:
        name = "echo"
        def complete(self, convs, temperature=0.8, max_tokens=256, seed=None): return ["1. a request that is long enough to keep"] * len(convs)
    return lambda **kw: ChatServer(Echo(), **kw)

def _closed_port_url():
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return f"http://127.0.0.1:{port}/v1"

@pytest.mark.parametrize("fault", ["down", "500", "garbage", "slow"])
def test_generator_endpoint_failures(fault, tmp_path, tiny_model_dir, endpoint_factory):
    base = ["run", "--out", tmp_path/"run", "--model", tiny_model_dir, *TINY_SETS, "--set", "synth.generator_timeout=1"]
    env = {"OPENAI_API_KEY": "sk-test-SECRET-123"}
    if fault == "down": r = run_cli(*base, "--generator-url", _closed_port_url(), "--generator-model", "m", env=env)
    else:
        kw = dict(fault=fault) if fault in ("500", "garbage") else dict(delay=5.0)
        with endpoint_factory(**kw) as srv: r = run_cli(*base, "--generator-url", srv.url, "--generator-model", "m", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "fix:" in r.stderr
    assert "127.0.0.1" in r.stderr                        # names the endpoint
    assert "SECRET" not in r.stderr + r.stdout            # never the key
    for f in (tmp_path/"run").rglob("*"):
        if f.is_file(): assert b"SECRET" not in f.read_bytes(), f

# --- a full disk -------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    d = tmp_path/"disk"; d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (d/"filler").write_bytes(b"x" * (64 - 8) * 1024)   # leave two pages: the lock fits, config.json does not
        yield d
    finally: subprocess.run(["umount", str(d)])

def test_full_disk_is_a_clear_error(small_disk, tiny_model_dir):
    r = run_cli("run", "--out", small_disk/"run", "--model", tiny_model_dir, *TINY_SETS)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no space left on device" in r.stderr and "free some disk space" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((small_disk/"run").glob(".*.tmp")), "a temporary file was left behind"
