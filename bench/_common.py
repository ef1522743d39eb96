"""Shared helpers for the benchmark scripts in bench/ (not a benchmark itself).

Memory on CPU is read from /proc/self/status: `VmRSS` (resident now) and `VmHWM` (the high-water mark since the last
reset). Writing "5" to /proc/self/clear_refs resets the high-water mark to the current RSS (Linux >= 4.0), so one
process can measure the peak of each step separately. On CUDA we use torch's allocator statistics instead.
"""
from __future__ import annotations
import gc, os, platform, re, sys, time

# Eight mild requests, the same for every benchmark (content does not matter for speed; lengths vary a little).
REQUESTS = [
    "How do I make a strong password that I can still remember?",
    "Which household cleaning products should never be mixed, and why?",
    "Write a short, friendly reminder text about a dentist appointment.",
    "What should I do if I think I took a double dose of my allergy medicine?",
    "Explain how phishing emails usually try to trick people.",
    "Hi! Can you tell me a joke about cats?",
    "My landlord kept my deposit. What are my options?",
    "Summarise the main safety rules for using a ladder at home.",
]


def stable_malloc():
    "Re-exec the script once with fixed glibc malloc thresholds, so freed large buffers go back to the OS and RSS peaks are comparable."
    if sys.platform != "linux" or os.environ.get("MALLOC_MMAP_THRESHOLD_"): return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def setup(device: str, threads: int):
    "Set the thread count; check the device; return a short description of the machine."
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    if threads > 0: torch.set_num_threads(threads)
    return machine(device)


def machine(device: str = "cpu") -> str:
    import torch
    if device == "cuda": hw = torch.cuda.get_device_name(0)
    else: hw = f"{os.cpu_count()}-core CPU ({platform.machine()}), {torch.get_num_threads()} torch thread(s)"
    return f"{hw}, torch {torch.__version__}"


def commit() -> str:
    "The git commit the benchmark runs on (`-dirty`: with uncommitted changes outside bench/results, which benchmarks write)."
    import subprocess
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    head = git("rev-parse", "--short", "HEAD").stdout.strip()
    if not head: return "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--", ":/", ":(exclude,top)bench/results").stdout.strip() else "")


def add_output_arguments(ap, name: str):
    "`--toy` (seconds, at toy size, no results file: CI's check that the script still runs) and `--out`."
    ap.add_argument("--toy", action="store_true", help="run at toy size in seconds and write no results file (CI runs this)")
    ap.add_argument("--out", default=None, help=f"results file (default: bench/results/{name}.txt; none with --toy)")


class _Tee:
    def __init__(self, stream): self.stream, self.lines = stream, []
    def write(self, x): self.lines.append(x); return self.stream.write(x)
    def flush(self): self.stream.flush()


def results_name(script: str, answer_tokens: int, default: int) -> str:
    "The results file's name: the script's, with `-N` when the answer length is not the script's default."
    return script if answer_tokens == default else f"{script}-{answer_tokens}"


def begin(device: str = "cpu", threads: int = 0):
    "Print the header (command, commit, machine, load) and keep everything printed after it for `finish`."
    sys.stdout = _Tee(sys.stdout)
    print(f"# bench/{os.path.basename(sys.argv[0])} {' '.join(sys.argv[1:])}".rstrip())
    print(f"commit {commit()}; machine: {setup(device, threads)}; load average at start: {load()}", flush=True)


def finish(args, name: str, ratio: str):
    "Print the load at the end and the machine-readable last line; write the output to the results file (not with --toy)."
    from pathlib import Path
    print(f"load average at end: {load()}")
    print(f"ratio {ratio}", flush=True)
    out = args.out or (None if args.toy else Path(__file__).parent/"results"/f"{name}.txt")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("".join(sys.stdout.lines))


def load() -> str:
    "The 1/5/15-minute load averages (as `uptime` prints them)."
    try: return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError: return "n/a"


def _status() -> dict[str, int]:
    return {k: int(v) * 1024 for k, v in re.findall(r"(VmHWM|VmRSS):\s+(\d+) kB", open("/proc/self/status").read())}


class PeakMemory:
    "Context manager: `.peak` = bytes above the starting level at the step's high point (RSS on CPU, allocator on CUDA)."
    def __init__(self, device: str = "cpu"): self.device, self.peak = device, 0

    def __enter__(self):
        import torch
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f: f.write("5")
            self.start = _status()["VmRSS"]
        return self

    def __exit__(self, *exc):
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize(); self.peak = torch.cuda.max_memory_allocated() - self.start
        else: self.peak = _status()["VmHWM"] - self.start


def sync(device: str):
    import torch
    if device == "cuda": torch.cuda.synchronize()


def timed(fn, device: str = "cpu"):
    "Run `fn()`; return (result, seconds, peak bytes)."
    pm = PeakMemory(device)
    with pm:
        sync(device); t0 = time.perf_counter()
        out = fn()
        sync(device); dt = time.perf_counter() - t0
    return out, dt, pm.peak


def time_parts(step_fn, patches, device: str = "cpu", rest: str = "student"):
    """Run `step_fn()` with each `(owner, attribute, part)` in `patches` timed as that part (`part` may be a function
    returning the name at call time); the time in no part is `rest`. Returns (result, total seconds, {part: seconds})."""
    parts, saved = {}, []
    def timer(fn, part):
        def run(*a, **kw):
            name = part() if callable(part) else part
            sync(device); t0 = time.perf_counter()
            out = fn(*a, **kw)
            sync(device); parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
            return out
        return run
    for owner, attr, part in patches:
        saved.append((owner, attr, owner.__dict__.get(attr)))
        setattr(owner, attr, timer(getattr(owner, attr), part))
    try:
        sync(device); t0 = time.perf_counter()
        out = step_fn()
        sync(device); total = time.perf_counter() - t0
    finally:
        for owner, attr, fn in reversed(saved):
            if fn is None: delattr(owner, attr)     # it was a bound method: drop the instance attribute
            else: setattr(owner, attr, fn)
    parts[rest] = total - sum(v for k, v in parts.items() if k != rest)
    return out, total, parts


def policyalign_parts(opt) -> list:
    "The `time_parts` patches for a policyalign `distill_step`: its rollout, its teacher pass and `opt`'s step."
    import policyalign.distill as distill, policyalign.rollout as rollout
    return [(distill, "rollout", "rollout"), (rollout, "teacher_hidden", "teacher"), (opt, "step", "optimiser")]


def mib(x: float) -> str: return f"{x / 2**20:.0f} MiB"


def median(xs):
    xs = sorted(xs); n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def load_bench_model(device: str, lora: bool = True, shape: str = "smollm2-135m"):
    """The embedded model (or a random-weight model of `shape`, see `SHAPES`), float32 on CPU and in the GPU's half
    precision on CUDA; not 4-bit, so that both sides of a comparison use the same base."""
    from policyalign.models import ModelConfig, load_model
    return load_model(ModelConfig(name=shape_model_dir(shape, device), device=device, quantize="none"), lora=lora)


def add_shape_argument(ap):
    ap.add_argument("--shape", default="smollm2-135m", choices=list(SHAPES),
                    help="the embedded model, or random weights at a real model's size (policyalign/shapes/)")



# Model shapes for `--shape`: random weights at the size of a real model, from the configs shipped in policyalign/shapes/.
SHAPES = {"smollm2-135m": None, "toy": "qwen2.5-1.5b-instruct", "qwen2.5-1.5b": "qwen2.5-1.5b-instruct", "qwen2.5-7b": "qwen2.5-7b-instruct"}
TOY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def bench_config(shape: str, vocab_at_least: int = 0, **ids):
    "The transformers config of `shape` (`toy`: the 1.5B config shrunk to 2 layers of width 64)."
    from policyalign.models import shape_config
    cfg = shape_config(SHAPES[shape], **(TOY if shape == "toy" else {}), **ids)
    cfg.vocab_size = max(cfg.vocab_size, vocab_at_least)
    return cfg


def shape_model_dir(shape: str, device: str = "cpu", root: str | None = None) -> str:
    """A folder holding a random-weight model of `shape` with the embedded model's tokenizer and chat template, built
    once per `root` (bf16 weights for CUDA, float32 for CPU; written from the CPU, so no GPU memory is used). `smollm2-135m`
    is the real embedded model."""
    import shutil, tempfile, torch
    from pathlib import Path
    from transformers import AutoTokenizer
    from policyalign.models import local_model_dir
    if SHAPES[shape] is None: return str(local_model_dir())
    folder = Path(root or tempfile.gettempdir())/f"policyalign-shape-{shape}"
    if (folder/"model.safetensors").exists() or (folder/"model.safetensors.index.json").exists(): return str(folder)
    tok = AutoTokenizer.from_pretrained(local_model_dir())
    cfg = bench_config(shape, len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)                        # left by a build that was cut short
    random_checkpoint(cfg, tmp, torch.bfloat16 if device == "cuda" else torch.float32); tok.save_pretrained(tmp)
    tmp.rename(folder)
    return str(folder)


def random_checkpoint(cfg, folder, dtype, shard_bytes: int = 2**30, seed: int = 0):
    """Save a random-weight model of `cfg` to `folder` one shard at a time, so that memory holds one shard, never the
    model: the tensor names and shapes come from a model built on the meta device; matrices are drawn from
    normal(0, initializer_range), norm weights are 1 and biases 0, as transformers initialises them."""
    import json, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    with torch.device("meta"): model = AutoModelForCausalLM.from_config(cfg)
    folder, gen, std = Path(folder), torch.Generator().manual_seed(seed), getattr(cfg, "initializer_range", 0.02)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map, shard, size, total = {}, {}, 0, 0
    def flush():
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(folder/name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name)); shard.clear()
    for name, p in model.named_parameters():           # tied weights (embedding = head) come once
        t = torch.empty(p.shape, dtype=dtype)
        if name.endswith("bias"): t.zero_()
        elif p.dim() == 1 and "norm" in name: t.fill_(1)
        else: t.normal_(0, std, generator=gen)
        if shard and size + t.nbytes > shard_bytes: flush(); size = 0
        shard[name], size, total = t, size + t.nbytes, total + t.nbytes
    flush()
    (folder/"model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    model.config.architectures, model.config.dtype = [type(model).__name__], dtype
    model.config.save_pretrained(folder)
