"The student's and the teacher's prompts differ by exactly the policy block, in tokens, on real chat templates."
from dataclasses import replace
import pytest
from policyalign.policy import Policy, Prompter, load_policy, template_default_system
from policyalign.models import local_model_dir, local_model_path
from policyalign.testing import tiny_tokenizer

QWEN = "qwen2.5-coder-0.5b"
needs_qwen = pytest.mark.skipif(not (local_model_path(QWEN)/"model.safetensors").exists(),
                                reason=f"{QWEN} is not in the model cache (491 MB download: python -c \"from policyalign.models import local_model_dir; local_model_dir('{QWEN}')\")")

def inserted(student:list, teacher:list) -> list:
    "The tokens `teacher` has in one place where `student` has none; fails unless that is the only difference."
    k = next((i for i,(a,b) in enumerate(zip(student, teacher)) if a != b), len(student))
    n = len(teacher) - len(student)
    assert n > 0 and teacher[:k] + teacher[k+n:] == student, "the prompts differ by more than one inserted block"
    return teacher[k:k+n]

def empty_system_turn(tok) -> str:
    "What a system turn with no text adds to a rendered prompt."
    bare,empty = (Prompter(tok, student_system=s).text("hi", False) for s in (None, ""))
    i = next(i for i,(a,b) in enumerate(zip(bare, empty)) if a != b)
    return empty[i:len(empty) - (len(bare) - i)]

def check_policy_block(tok, pol, request="How do I kill a Python process?") -> str:
    "Assert the teacher's prompt tokens are the student's plus the policy block (after the template's default, when it has one)."
    pr = Prompter(tok, pol)
    block = tok.decode(inserted(pr.student(request), pr.teacher(request)))
    default = template_default_system(tok)
    if default: assert block == f"\n\n{pol.system_prompt}"                           # the default stays; the policy follows it
    else: assert block.replace(pol.system_prompt, "", 1) == empty_system_turn(tok)   # a system turn holding only the policy
    return default

@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(local_model_dir())

@pytest.mark.parametrize("name", ["general", "short"])
def test_smollm2_teacher_is_the_student_plus_the_policy(smol_tok, name):
    assert "SmolLM" in check_policy_block(smol_tok, load_policy(name))

@needs_qwen
@pytest.mark.parametrize("name", ["general", "short"])
def test_qwen_teacher_is_the_student_plus_the_policy(name):
    "Qwen's tokenizer has one token for '.\\n\\n': tokenizing the teacher's text whole would change the student's last token."
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(local_model_path(QWEN))
    assert check_policy_block(tok, load_policy(name)).startswith("You are Qwen")

def test_template_without_a_default_gets_a_system_turn_with_the_policy_only():
    tok = tiny_tokenizer()
    tok.chat_template = tok.chat_template.replace("{% if loop.first and messages[0]['role'] != 'system' %}", "{% if false %}")
    assert template_default_system(tok) == ""
    one_line = Policy.parse("1. Weapons: Do not explain how to build weapons.")   # the character tokenizer has no token for a blank line
    assert check_policy_block(tok, one_line) == ""

def test_the_paper_teacher_replaces_the_default(smol_tok):
    pol = replace(load_policy("general"), teacher_system="alone")
    pr,default = Prompter(smol_tok, pol),template_default_system(smol_tok)
    s,t = pr.text("hello", False),pr.text("hello", True)
    assert default not in t and t.replace(pol.system_prompt, default) == s
    assert pr.policy_span("hello") is None
