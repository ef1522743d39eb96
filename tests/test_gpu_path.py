"""The GPU path, checked on CPU: collectives on the rank's own device, loading onto the right device, fp16 that keeps the
residual stream in float32, and a newer torch left alone."""
import pytest, torch
import policyalign.distill as D
import policyalign.parallel as P
from policyalign.models import ModelConfig, load_model
from policyalign.testing import tiny_model, tiny_tokenizer, tiny_prompts, tiny_policy

class Reduced(Exception): "Raised by the fake process group once it has seen a tensor."

class FakeNCCL:
    "A process group that records the device of the tensor it is asked to reduce, then stops."
    def __init__(self): self.devices = []
    def get_backend(self): return "nccl"
    def all_reduce(self, t): self.devices.append(t.device); raise Reduced()

def test_collectives_use_the_rank_s_own_gpu(monkeypatch):
    g = FakeNCCL()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert P.collective_device(g) == torch.device("cuda", 1)     # NCCL reduces CUDA tensors only
    monkeypatch.setattr(P, "process_group", lambda: g)
    monkeypatch.setattr(P, "collective_device", lambda d: torch.device("meta"))   # stands in for cuda:1 on a CPU machine
    with pytest.raises(Reduced): P.global_sum(1.5)
    assert g.devices == [torch.device("meta")]

def test_a_checkpoint_is_loaded_onto_the_model_s_device(monkeypatch, tmp_path):
    from policyalign.models import add_lora
    m = add_lora(tiny_model(tok=tiny_tokenizer()))
    cfg = D.DistillConfig.tiny(steps=1)
    opt,sched = D.make_optimizer(m, cfg)
    D.save_checkpoint(m, opt, sched, 1, [], tmp_path, cfg)
    seen,real = [],torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("map_location")) or real(*a, **k))
    assert D.load_checkpoint(m, opt, sched, tmp_path)[0] == 1
    assert seen == [torch.device("cpu")]                         # a checkpoint written on cuda:1 resumes on this process's device

def test_the_guard_loads_straight_onto_its_device_from_safetensors(monkeypatch):
    import transformers
    from policyalign.judges import GuardJudge
    got = {}
    class Stop(Exception): pass
    def model(*a, **k): got.update(k); raise Stop()
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    with pytest.raises(Exception): GuardJudge("Qwen/Qwen3Guard-Gen-4B").load()
    assert got["device_map"] == {"": "cpu"} and got["use_safetensors"] is True     # no whole copy in CPU memory first

def test_fp16_keeps_embeddings_and_norms_in_float32(tiny_model_dir):
    m,_ = load_model(ModelConfig(str(tiny_model_dir), precision="fp16"), lora=False)
    assert m.get_input_embeddings().weight.dtype == torch.float32
    assert {p.dtype for n,p in m.named_parameters() if "norm" in n} == {torch.float32}
    assert m.model.layers[0].mlp.down_proj.weight.dtype == torch.float16
    outs = []
    m.model.layers[-1].register_forward_hook(lambda mod, a, o: outs.append((o[0] if isinstance(o, tuple) else o).dtype))
    from policyalign.models import autocast
    with torch.no_grad(), autocast(m): m(input_ids=torch.tensor([[5, 6, 7]]))
    assert outs == [torch.float32]                                # the residual stream stays in float32
