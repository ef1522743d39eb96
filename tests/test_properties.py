"Properties that must hold for any input (hypothesis)."
import math
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from policyalign.core import PolicyAlignError
from policyalign.policy import Policy
from policyalign.synthesis import dedup_rows
from policyalign.losses import DIVERGENCES, token_divergence, reverse_kl, forward_kl, generalized_jsd
from policyalign.filtering import FilterConfig, select_sensitive

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the policy parser ---------------------------------------------------------------------------------------
line = st.one_of(st.text(max_size=60), st.builds(lambda a,b: f"{a}. {b}", st.integers(0, 99), st.text(max_size=40)),
                 st.builds(lambda b: f"- {b}", st.text(max_size=40)), st.builds(lambda b: f"## {b}", st.text(max_size=20)),
                 st.builds(lambda a,b: f"{a}: {b}", st.text(min_size=1, max_size=15), st.text(max_size=40)), st.just(""))
documents = st.lists(line, max_size=12).map("\n".join)

@SETTINGS
@given(documents)
def test_parser_never_crashes_and_round_trips(text):
    try: p = Policy.parse(text)
    except PolicyAlignError: return           # refused with a clear message: fine
    assert len(p) >= 1 and all(r.title and r.text for r in p)
    again = Policy.parse(p.render())
    assert again == p

# --- deduplication ---------------------------------------------------------------------------------------------
words = st.sampled_from(["how", "to", "make", "a", "bomb", "poison", "track", "my", "ex", "phone", "quickly", "at", "home"])
sentences = st.lists(words, min_size=3, max_size=9).map(" ".join)
rows = st.lists(sentences, max_size=14).map(lambda xs: [dict(request=x, rule_id="R1", kind="harmful") for x in xs])

@SETTINGS
@given(rows, st.randoms(use_true_random=False))
def test_dedup_idempotent_and_order_independent(rs, rnd):
    kept,_ = dedup_rows(rs, threshold=0.7)
    again,_ = dedup_rows(kept, threshold=0.7)
    assert again == kept
    shuffled = list(rs); rnd.shuffle(shuffled)
    kept2,_ = dedup_rows(shuffled, threshold=0.7)
    key = lambda r: r["request"]
    assert sorted(map(key, kept2)) == sorted(map(key, kept))

# --- losses -----------------------------------------------------------------------------------------------------
logits = st.integers(1, 4).flatmap(lambda n: st.lists(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=6, max_size=6), min_size=n, max_size=n))

@SETTINGS
@given(logits, st.sampled_from(DIVERGENCES), st.integers(1, 6))
def test_losses_zero_on_identical_and_finite_on_extremes(x, kind, k):
    t = torch.tensor(x)
    same = token_divergence(t, t.clone(), kind, top_k=k)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-4)
    other = token_divergence(t, t.flip(-1) * 0.5, kind, top_k=k)
    assert torch.isfinite(other).all()

@SETTINGS
@given(logits, logits)
def test_full_vocabulary_divergences_are_non_negative(a, b):
    n = min(len(a), len(b))
    s,t = torch.tensor(a[:n]).log_softmax(-1),torch.tensor(b[:n]).log_softmax(-1)
    for f in (reverse_kl, forward_kl, lambda s,t: generalized_jsd(s, t, 0.3)):
        assert (f(s, t) >= -1e-4).all()

# --- selection ---------------------------------------------------------------------------------------------------
@SETTINGS
@given(st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.sampled_from(["R1", "R2", "R3"]), st.booleans()), min_size=1, max_size=40),
       st.integers(1, 50))
def test_selection_returns_the_requested_count_and_every_rule(items, n):
    rs = [dict(request=f"q{i}", kl=s, rule_id=r, kind="harmful" if h else "benign") for i,(s,r,h) in enumerate(items)]
    harmful = sum(r["kind"] == "harmful" for r in rs)
    if harmful == 0:
        with pytest.raises(PolicyAlignError): select_sensitive(rs, FilterConfig(top_n=n))
        return
    sel = select_sensitive(rs, FilterConfig(top_n=n, min_per_rule=0))        # ranked together: exactly the n best
    assert len(sel) == min(n, harmful) and all(r["kind"] == "harmful" for r in sel)
    assert min(r["kl"] for r in sel) >= max([r["kl"] for r in rs if r["kind"] == "harmful" and r not in sel], default=-1)
    sel = select_sensitive(rs, FilterConfig(top_n=n))   # the default rule minimum (1) wins over top_n: no rule is starved
    rules = {r["rule_id"] for r in rs if r["kind"] == "harmful"}
    assert len(sel) == max(min(n, harmful), len(rules)) and {r["rule_id"] for r in sel} == rules

# --- scores do not depend on batch size or padding ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_setup():
    from policyalign.testing import tiny_model, tiny_tokenizer, tiny_policy
    from policyalign.models import add_lora
    from policyalign.policy import Prompter
    tok = tiny_tokenizer()
    return add_lora(tiny_model(tok=tok)), tok, Prompter(tok, tiny_policy())

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text("abcdefgh ?", min_size=1, max_size=20), st.lists(st.integers(4, 60), min_size=1, max_size=12)), min_size=1, max_size=5),
       st.integers(1, 5))
def test_scores_do_not_depend_on_batching(tiny_setup, items, bs):
    from policyalign.rollout import pair_batch, score_tokens, answer_scores
    m,tok,pr = tiny_setup
    s_p,t_p,ans = [pr.student(r) for r,_ in items],[pr.teacher(r) for r,_ in items],[a for _,a in items]
    with torch.no_grad():
        whole = answer_scores(*score_tokens(m, pair_batch(s_p, t_p, ans, tok.pad_token_id)))["kl"]
        parts = []
        for i in range(0, len(items), bs):
            parts += answer_scores(*score_tokens(m, pair_batch(s_p[i:i+bs], t_p[i:i+bs], ans[i:i+bs], tok.pad_token_id)))["kl"]
    assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a,b in zip(whole, parts))


# --- the crash-tolerant cache ----------------------------------------------------------------------------------
values = st.one_of(st.integers(), st.text(max_size=20), st.lists(st.floats(allow_nan=False), max_size=3))
puts = st.lists(st.dictionaries(st.sampled_from("abcdefgh"), values, min_size=1, max_size=3), min_size=1, max_size=8)

@SETTINGS
@given(puts, st.floats(0, 1), puts)
def test_cache_keeps_every_complete_record_through_a_crash(tmp_path_factory, before, where, after):
    "Puts, then a crash that cuts the file at any byte, then more puts: every record written whole survives."
    from policyalign.core import JsonlCache
    path = tmp_path_factory.mktemp("cache")/"c.jsonl"
    c = JsonlCache(path)
    for p in before: c.put(p)
    raw = path.read_bytes()
    cut = int(where * len(raw))
    path.write_bytes(raw[:cut])                                 # the crash
    expected = {}
    for line in raw[:cut].split(b"\n")[:-1]:                    # the lines that were complete before the cut
        r = __import__("json").loads(line); expected[r["key"]] = r["value"]
    c = JsonlCache(path)
    assert c.data == expected
    for p in after: c.put(p); expected.update(p)
    assert JsonlCache(path).data == expected                    # appends after a crash are whole records too
