"""The causal LM task judged by KL to the float model (issue 16 §1), on a tiny random Llama."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from proxies.kl import exact_kl
from proxies.tasks import CausalLMTask

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(40.0)  # peaked next-token distributions, as a trained LM's are
    return m


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 300, (3, 17), generator=g)} for _ in range(2)]


def _perturbed(lm):
    q = type(lm)(lm.config).eval()
    q.load_state_dict(lm.state_dict())
    with torch.no_grad():
        w = q.model.layers[0].mlp.down_proj.weight
        w.add_(3.0 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(2)))
    return q


def test_float_model_has_zero_kl_full_agreement_and_its_perplexity(lm, batches):
    task = CausalLMTask(top_k=16)
    prepared = task.prepare(lm, batches)
    m = task.evaluate(lm, prepared)
    assert m["kl_to_float"] == pytest.approx(0.0, abs=1e-5) and m["top1_agreement"] == 1.0
    assert m["tokens"] == 2 * 3 * 16
    with torch.no_grad():
        nll = sum(F.cross_entropy(lm(input_ids=b["input_ids"]).logits[:, :-1].transpose(1, 2), b["input_ids"][:, 1:],
                                  reduction="sum") for b in batches) / m["tokens"]
    assert m["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_kl_and_its_stderr_against_a_direct_computation(lm, batches):
    """The held-out KL is the per-token mean of the compact KL, a lower bound of the exact KL
    (close to it at this k), and its error is over the 6 sequences."""
    task = CausalLMTask(top_k=64)
    prepared = task.prepare(lm, batches)
    q = _perturbed(lm)
    m = task.evaluate(q, prepared)
    with torch.no_grad():
        exact = torch.cat([exact_kl(lm(input_ids=b["input_ids"]).logits[:, :-1],
                                    q(input_ids=b["input_ids"]).logits[:, :-1]).mean(1) for b in batches])
    assert 0 < m["kl_to_float"] <= float(exact.mean()) + 1e-6
    assert m["kl_to_float"] >= 0.7 * float(exact.mean())
    assert 0 < m["kl_stderr"] < m["kl_to_float"]
    assert m["kl_stderr"] == pytest.approx(float(exact.std() / math.sqrt(6)), rel=0.5)
    loss = sum(float(task.loss(q, b).detach()) for b in prepared) / len(prepared)
    assert loss == pytest.approx(m["kl_to_float"], rel=1e-5)  # equal batches: the loss is the metric


def test_fisher_targets_are_drawn_from_the_float_top_k(lm, batches):
    task = CausalLMTask(top_k=8)
    b = task.prepare(lm, batches[:1])[0]
    t = task.fisher_targets(b, torch.Generator().manual_seed(3))["t"]
    assert t.shape == b["input_ids"][:, 1:].shape
    assert (t.unsqueeze(-1) == b["ref_index"]).any(-1).all()
    losses = task.sample_losses(lm, b, torch.Generator().manual_seed(3))
    assert losses.shape == (3,) and torch.isfinite(losses).all()


def test_unprepared_batches_fall_back_to_cross_entropy_and_evaluate_refuses(lm, batches):
    task = CausalLMTask()
    b = batches[0]
    with torch.no_grad():
        logits = lm(input_ids=b["input_ids"]).logits[:, :-1]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["input_ids"][:, 1:].reshape(-1))
    assert float(task.loss(lm, b).detach()) == pytest.approx(float(ce), rel=1e-5)
    with pytest.raises(KeyError, match="prepare"):
        task.evaluate(lm, batches)
