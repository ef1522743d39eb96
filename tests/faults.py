"""Fault injection for the kill tests: run `policyalign ARGS` in this process and SIGKILL it at a named point.

    python tests/faults.py POINT ARGS...

POINT is `after:<stage>` (right after stages.json records that stage) or `inside:<stage>`: synth, once its
requests are made and deduplicated, before any is written; filter and eval, halfway through writing their cache's
second record (a torn line); distill, right after its first checkpoint (`inside:distill:N`: its N-th). The library has no hook for this: the points are patched in here.
"""
import json, os, signal, sys


def _die(): os.kill(os.getpid(), signal.SIGKILL)


def _after(stage):
    import policyalign.pipeline as pl
    write = pl.write_json
    def write_then_die(path, obj, *a, **kw):
        write(path, obj, *a, **kw)
        if path.name == "stages.json" and stage in obj: _die()
    pl.write_json = write_then_die


def _on_call(owner, name, n):
    "SIGKILL as the `n`-th call of `owner.name` returns."
    orig,calls = getattr(owner, name),[0]
    def wrapped(*a, **kw):
        out = orig(*a, **kw)
        calls[0] += 1
        if calls[0] == n: _die()
        return out
    setattr(owner, name, wrapped)


def _torn_put(cache_name):
    "Die halfway through appending the second record to the JSONL cache named `cache_name`."
    from policyalign.core import JsonlCache
    orig,seen = JsonlCache.put,[0]
    def put(self, new):
        if self.path.name == cache_name and new:
            seen[0] += 1
            if seen[0] == 2:
                k,v = next(iter(new.items()))
                line = json.dumps({"key": k, "value": v}, default=str)
                with open(self.path, "a", encoding="utf-8") as f: f.write(line[:len(line) // 2])
                _die()
        return orig(self, new)
    JsonlCache.put = put


def install(point:str):
    where,stage,*n = point.split(":")
    if where == "after": return _after(stage)
    if stage == "synth":
        import policyalign.synthesis as sy
        return _on_call(sy, "dedup_rows", 1)
    if stage == "filter": return _torn_put("score_cache.jsonl")
    if stage == "eval": return _torn_put("generations.jsonl")
    if stage == "distill":
        import policyalign.distill as d
        return _on_call(d, "save_checkpoint", int(n[0]) if n else 1)
    raise ValueError(point)


if __name__ == "__main__":
    install(sys.argv[1])
    from policyalign.cli import main
    sys.exit(main(sys.argv[2:]))
