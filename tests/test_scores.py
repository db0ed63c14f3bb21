"""scores.py against plain full-logits references (torch.log_softmax over the whole vocabulary)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from evalmem.screen import decide
from evalmem.scores import (check_head, discoverable, extraction_logprob, head_stats, hidden_states, loss, match_len,
                            min_k, min_k_pp, position_scores as scores_of)


def position_scores(*args, **kwargs):
    """The per-position arrays as numpy."""
    return {k: v.numpy() for k, v in scores_of(*args, **kwargs).items()}


def reference(logits: torch.Tensor, true: torch.Tensor, temperature=1.0, top_k=0) -> dict:
    """FIELDS from full logits (..., V): log_softmax over everything, screen.decide for hit and gap."""
    logits = logits.double()
    lp = F.log_softmax(logits, -1)
    p = lp.exp()
    mu = (p * lp).sum(-1)
    hit, gap, _ = decide(logits, true)
    kept = logits
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[..., -1:]
        kept = logits.masked_fill(logits < kth, -torch.inf)  # ties at the K-th are kept (TopKLogitsWarper's rule)
    sample = F.log_softmax(kept / temperature, -1).gather(-1, true[..., None]).squeeze(-1)
    return {"hit": hit, "gap": gap, "logp": lp.gather(-1, true[..., None]).squeeze(-1), "mu": mu,
            "sigma2": (p * lp * lp).sum(-1) - mu * mu, "sample_logp": sample}


def tiny_llama(vocab=3001, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked distributions (random init gives near-uniform ones)
    return model.to(dtype)


def windows_with_hits(model, n=6, length=40, greedy_rows=3, seed=1):
    """Random windows; the first `greedy_rows` continue greedily after token 10 (all hits there)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (n, length), generator=g)
    with torch.no_grad():
        for t in range(10, length):
            ids[:greedy_rows, t] = model(input_ids=ids[:greedy_rows, :t]).logits[:, -1].argmax(-1)
    return ids


def assert_matches(ours: dict, ref: dict, tol: float, tie_tol: float = -1.0):
    ref = {k: v.numpy() for k, v in ref.items()}
    clear = ref["gap"] > tie_tol  # arg-max of near ties may flip between kernels
    assert (ours["hit"] == ref["hit"])[clear].all()
    for k in ("gap", "logp", "mu", "sigma2", "sample_logp"):
        finite = np.isfinite(ref[k])
        assert (np.isfinite(ours[k]) == finite).all(), k
        np.testing.assert_allclose(ours[k][finite], ref[k][finite], rtol=tol, atol=tol, err_msg=k)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.mark.parametrize("rows,vocab_chunk", [(37, 700), (1000, 4096), (5, 3001), (64, 1)])
@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 50), (1.3, 0), (1.0, 1)])
def test_fused_equals_full_logits(llama, rows, vocab_chunk, temperature, top_k):
    if vocab_chunk == 1 and (temperature, top_k) != (0.7, 50):
        pytest.skip("one vocabulary entry per block is slow: one case")
    ids = windows_with_hits(llama)
    ours = position_scores(llama, ids, temperature, top_k, rows=rows, vocab_chunk=vocab_chunk)
    with torch.no_grad():
        ref = reference(llama(input_ids=ids).logits[:, :-1], ids[:, 1:], temperature, top_k)
    assert ours["hit"][:3, 9:].all() and ours["hit"].dtype == bool and ours["logp"].dtype == np.float32
    assert_matches(ours, ref, tol=2e-4, tie_tol=1e-4)


def exact_logits_stats(logits, true, **kw):
    """head_stats on hidden states = logits and weight = identity: the block logits are exact copies."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return head_stats(logits, torch.eye(logits.shape[1]), torch.as_tensor(true), **kw)


TIES = [[1, 3, 3, 0, 3, 2], [1, 3, 3, 0, 3, 2], [1, 3, 3, 0, 3, 2], [1, 3, 3, 0, 3, 2],
        [5, 5, 5, 5, 5, 5], [5, 5, 5, 5, 5, 5], [0, 0, 0, 0, 0, 7], [0, 0, 0, 0, 0, 7], [2, 1, 0, 0, 1, 2]]
TIES_TRUE = [1, 2, 4, 5, 0, 3, 5, 4, 5]


@pytest.mark.parametrize("rows,vocab_chunk", [(1, 1), (2, 2), (4, 4), (9, 6), (3, 5)])
def test_planted_ties_follow_decide(rows, vocab_chunk):
    logits = torch.tensor(TIES, dtype=torch.float32)
    true = torch.tensor(TIES_TRUE)
    ours = exact_logits_stats(logits, true, rows=rows, vocab_chunk=vocab_chunk)
    hit, gap, _ = decide(logits, true)
    assert ours["hit"].tolist() == hit.tolist() == [True, False, False, False, True, False, True, False, False]
    assert ours["gap"].tolist() == gap.tolist() == [0, 0, 0, 1, 0, 0, 7, 7, 0]


def test_random_ties_and_top_k_ties():
    g = torch.Generator().manual_seed(3)
    logits = torch.randint(0, 4, (300, 23), generator=g).float()  # many exact ties everywhere
    true = torch.randint(0, 23, (300,), generator=g)
    for k, temperature, chunk, rows in [(1, 1.0, 5, 7), (3, 0.5, 4, 300), (7, 2.0, 1, 11), (23, 1.0, 10, 64),
                                        (30, 1.0, 3, 2), (0, 0.8, 6, 50)]:
        ours = exact_logits_stats(logits, true, temperature=temperature, top_k=k, rows=rows, vocab_chunk=chunk)
        assert_matches({n: v.numpy() for n, v in ours.items()}, reference(logits, true, temperature, k), tol=1e-5)


def test_top_k_sampling_by_hand():
    logits = [[2.0, 1.0, 0.0]] * 3
    ours = exact_logits_stats(logits, [0, 1, 2], temperature=2.0, top_k=2)["sample_logp"]
    z = math.log(math.exp(1.0) + math.exp(0.5))  # top-2 at T=2: logits / T = 1, 0.5 (token 2 is cut)
    np.testing.assert_allclose(ours.tolist(), [1.0 - z, 0.5 - z, -math.inf], rtol=1e-6)
    full = exact_logits_stats(logits, [0, 1, 2], temperature=2.0)["sample_logp"]
    z3 = math.log(math.exp(1.0) + math.exp(0.5) + 1.0)
    np.testing.assert_allclose(full.tolist(), [1.0 - z3, 0.5 - z3, -z3], rtol=1e-6)
    tied = exact_logits_stats([[1.0, 0.0, 1.0, 1.0]] * 2, [3, 1], top_k=2, vocab_chunk=1)["sample_logp"]
    np.testing.assert_allclose(tied.tolist(), [math.log(1 / 3), -math.inf], rtol=1e-6)  # all 3 tied kept


def test_min_k_pp_equals_mimir():
    p = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625], [0.9, 0.05, 0.03, 0.01, 0.01],
                      [0.2, 0.2, 0.2, 0.2, 0.2], [0.6, 0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.1, 0.1]])
    true = torch.tensor([1, 0, 3, 4, 2])
    ours = exact_logits_stats(p.log() + 3.0, true, vocab_chunk=2)  # logits: log p up to a constant
    all_probs = torch.log_softmax(p.log(), -1)  # MIMIR (mimir/attacks/min_k_plus_plus.py), verbatim formulas
    mu = (torch.exp(all_probs) * all_probs).sum(-1)
    sigma = (torch.exp(all_probs) * torch.square(all_probs)).sum(-1) - torch.square(mu)
    target_prob = all_probs.gather(1, true[:, None]).squeeze(1)
    np.testing.assert_allclose(ours["mu"], mu, atol=1e-6)
    np.testing.assert_allclose(ours["sigma2"], sigma, atol=1e-6)
    scores = (target_prob.numpy() - mu.numpy()) / sigma.sqrt().numpy()
    mimir = -np.mean(sorted(scores[[0, 1, 3, 4]])[:int(4 * 0.5)])  # a window of 4 positions (the uniform row: sigma 0)
    window = lambda k: ours[k][None, [0, 1, 3, 4]].numpy()
    np.testing.assert_allclose(-min_k_pp(window("logp"), window("mu"), window("sigma2"), 0.5), [mimir],
                               rtol=1e-5)


def bf16_logit_error(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per position, a bound on any logit's error in a bf16 matmul with float32 accumulation: the sum's
    rounding (d float32 additions of exact bf16 products) plus the result's rounding to bf16 (half an ulp)."""
    h, w = hidden.double(), weight.double()
    exact = h @ w.T
    accumulated = hidden.shape[-1] * 2.0 ** -24 * (h.abs() @ w.abs().T)
    return (exact.abs() * 2.0 ** -8 + accumulated).amax(-1) * 1.01 + 1e-6, exact


def test_bf16_weights_give_float32_close_to_fp32():
    ids = windows_with_hits(tiny_llama())
    fp32 = position_scores(tiny_llama(), ids, 0.7, 40, rows=50, vocab_chunk=999)
    bf16_model = tiny_llama(dtype=torch.bfloat16)
    bf16 = position_scores(bf16_model, ids, 0.7, 40, rows=50, vocab_chunk=999)
    assert all(v.dtype in (np.float32, bool) for v in bf16.values())
    for k in ("logp", "mu", "sigma2"):
        err = np.abs(bf16[k] - fp32[k])
        assert np.median(err) < 0.05 and err.max() < 1.0, (k, np.median(err), err.max())
    assert (bf16["hit"] == fp32["hit"]).mean() > 0.97


def test_bf16_statistics_within_bf16_error_of_exact_logits():
    """Against the float64 product of the same bf16 hidden states and weights, each statistic is off by at
    most what an error e per logit can move it: 2e for gap and log-probabilities, e(sigma + 2 sigma^2) for
    sigma^2 and e sigma for mu (their gradients), twice over for the second-order terms."""
    model, temperature = tiny_llama(dtype=torch.bfloat16), 0.7
    ids = windows_with_hits(model)
    ours = position_scores(model, ids, temperature, rows=50, vocab_chunk=999)
    with torch.no_grad():
        hidden = hidden_states(model, ids[:, :-1])
        e, exact = bf16_logit_error(hidden, model.lm_head.weight)
    ref = {k: v.numpy() for k, v in reference(exact, ids[:, 1:], temperature).items()}
    e = e.numpy()
    sigma = np.sqrt(ref["sigma2"])
    bound = {"gap": 2 * e, "logp": 2 * e, "sample_logp": 2 * e / temperature, "mu": 2 * e * (1 + sigma),
             "sigma2": 4 * e * (sigma + ref["sigma2"]) + 4 * e * e}
    for k, b in bound.items():
        slack = b + 2e-4 * (1 + np.abs(ref[k]))  # the float32 statistics' own rounding
        assert (np.abs(ours[k] - ref[k]) <= slack).all(), (k, np.abs(ours[k] - ref[k]).max())
    clear = np.abs(ref["gap"]) > 2 * e
    assert clear.mean() > 0.9 and (ours["hit"] == ref["hit"])[clear].all()


def test_softcapped_head_supported_and_wrong_head_refused():
    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16, final_logit_softcapping=5.0)).eval()
    ids = torch.randint(0, 1000, (3, 20))
    ours = position_scores(gemma, ids, rows=11, vocab_chunk=300)
    with torch.no_grad():
        assert_matches(ours, reference(gemma(input_ids=ids).logits[:, :-1], ids[:, 1:]), tol=2e-4, tie_tol=1e-4)
    llama = tiny_llama(vocab=500)
    llama.config.final_logit_softcapping = 2.0  # claimed but not applied by LlamaForCausalLM
    with pytest.raises(ValueError, match="not lm_head"):
        check_head(llama)


def test_reducers():
    hit = np.array([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(match_len(hit, [1, 3, 4], 3), [[2, 0, 3], [3, 3, 3], [0, 0, 0]])
    np.testing.assert_array_equal(match_len(hit, 4), [3, 3, 0])  # columns 3..5: tokens 4..6
    logp = np.log(np.array([[0.5, 0.25, 0.5, 1.0, 0.125]]))
    np.testing.assert_allclose(loss(logp), [-np.log([0.5, 0.25, 0.5, 1.0, 0.125]).mean()])
    np.testing.assert_allclose(min_k(logp, 0.2), np.log([0.125]))  # max(1, floor(1)) = 1 value
    np.testing.assert_allclose(min_k(logp, 0.5), [np.log([0.125, 0.25]).mean()])
    np.testing.assert_allclose(extraction_logprob(logp, 3, 2), [np.log(0.5 * 1.0)])  # columns 2, 3


def test_discoverable_is_stable():
    z = np.array([-1e-12, -0.5, -3.0, -60.0, -np.inf, 0.0])
    prob, ok = discoverable(z, n=1000, p=0.1)
    naive = 1 - (1 - np.exp(z.astype(np.longdouble))) ** 1000
    np.testing.assert_allclose(prob[:3], naive[:3].astype(float), rtol=1e-9)
    np.testing.assert_allclose(prob[3], 1000 * np.exp(-60.0), rtol=1e-6)  # naive float64 gives 0 here
    assert prob[4] == 0 and prob[5] == 1
    assert ok.tolist() == [True, True, True, False, False, True]
    assert discoverable(np.log([1e-4]), n=1054, p=0.1)[1][0] and not discoverable(np.log([1e-4]), n=1053, p=0.1)[1][0]


def test_eager_equals_compiled(monkeypatch, llama):
    from evalmem import scores

    monkeypatch.setattr(scores, "COMPILE_FROM", 1)  # compile the tiny vocabulary's blocks too
    ids = windows_with_hits(llama)
    compiled = position_scores(llama, ids, 0.7, 0, rows=100, vocab_chunk=1000)
    assert scores.COMPILE  # compiling worked here (else the comparison below is eager against eager)
    monkeypatch.setattr(scores, "COMPILE", False)
    eager = position_scores(llama, ids, 0.7, 0, rows=100, vocab_chunk=1000)
    for k in compiled:
        np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-5, atol=1e-5, err_msg=k)
    planted = exact_logits_stats(TIES, TIES_TRUE, vocab_chunk=4)
    assert planted["hit"].tolist() == [True, False, False, False, True, False, True, False, False]
