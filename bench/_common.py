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


def mib(x: float) -> str: return f"{x / 2**20:.0f} MiB"


def median(xs):
    xs = sorted(xs); n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def load_bench_model(device: str, lora: bool = True, name: str = "smollm2-135m"):
    "The embedded model, float32 on CPU and bf16 (not 4-bit, so both sides of a comparison match) on CUDA."
    from policyalign.models import ModelConfig, load_model
    return load_model(ModelConfig(name=name, device=device, quantize="none"), lora=lora)

