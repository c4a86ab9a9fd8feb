"""ClassifierTask: KL to the float model as the loss (labels optional), top-1 agreement, accuracy
and cross-entropy when labels exist, and the three ways a model takes its input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxies.tasks import ClassifierTask, first_tensor


def _net(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, classes)).eval()


def _batches(n=(10, 7), labels=True, classes=4):
    g = torch.Generator().manual_seed(3)
    out = []
    for k in n:
        b = {"x": torch.randn(k, 6, generator=g)}
        if labels:
            b["y"] = torch.randint(0, classes, (k,), generator=g)
        out.append(b)
    return out


def test_float_model_has_zero_kl_and_full_agreement():
    task, net = ClassifierTask(), _net()
    batches = task.prepare(net, _batches())
    with torch.no_grad():
        assert float(task.loss(net, batches[0])) == pytest.approx(0, abs=1e-6)
    m = task.evaluate(net, batches)
    assert task.metric == "kl_to_float" and not task.higher_is_better
    assert m["kl_to_float"] == pytest.approx(0, abs=1e-6) and m["top1_agreement"] == 1.0 and m["samples"] == 17
    assert 0 <= m["accuracy"] <= 1 and m["cross_entropy"] > 0


def test_metrics_against_a_direct_computation():
    task, ref_net, other = ClassifierTask(), _net(0), _net(1)
    raw = _batches()
    batches = task.prepare(ref_net, raw)
    x, y = torch.cat([b["x"] for b in raw]), torch.cat([b["y"] for b in raw])
    with torch.no_grad():
        p, q = F.softmax(ref_net(x), -1), F.log_softmax(other(x), -1)
        kl = (p * (p.log() - q)).sum(-1)
        m = task.evaluate(other, batches)
        assert m["kl_to_float"] == pytest.approx(float(kl.mean()), rel=1e-5)
        assert m["top1_agreement"] == pytest.approx(float((q.argmax(-1) == p.argmax(-1)).float().mean()))
        assert m["accuracy"] == pytest.approx(float((q.argmax(-1) == y).float().mean()))
        assert m["cross_entropy"] == pytest.approx(float(F.nll_loss(q, y)), rel=1e-5)
        # the loss is the batch's mean KL (what refine and the measured proxy read)
        b = batches[0]
        assert float(task.loss(other, b)) == pytest.approx(float(kl[:10].mean()), rel=1e-5)


def test_labels_are_optional():
    task, net = ClassifierTask(), _net()
    batches = task.prepare(net, _batches(labels=False))
    m = task.evaluate(_net(1), batches)
    assert set(m) == {"kl_to_float", "top1_agreement", "samples"}
    assert m["kl_to_float"] > 0


def test_labels_beyond_the_model_outputs_are_refused():
    task = ClassifierTask()
    with pytest.raises(ValueError, match="a label is 7 but the model has 4 outputs"):
        task.prepare(_net(), [{"x": torch.randn(3, 6), "y": torch.tensor([0, 7, 1])}])


def test_fisher_labels_are_sampled_from_the_float_model():
    task, net = ClassifierTask(), _net()
    (b,) = task.prepare(net, [{"x": torch.randn(2000, 6, generator=torch.Generator().manual_seed(1))}])
    t1 = task.fisher_targets(b, torch.Generator().manual_seed(5))["t"]
    t2 = task.fisher_targets(b, torch.Generator().manual_seed(5))["t"]
    assert torch.equal(t1, t2)  # seeded
    # sampled, not argmax: the frequency of each class follows the float model's probabilities
    freq = torch.bincount(t1, minlength=4).float() / len(t1)
    assert torch.allclose(freq, b["ref_logits"].exp().mean(0), atol=0.04)
    with torch.no_grad():
        got = task.sample_losses(net, b, torch.Generator().manual_seed(5))
        assert torch.allclose(got, F.cross_entropy(net(b["x"]), t1, reduction="none"))


def test_unprepared_labeled_batches_fall_back_to_cross_entropy():
    task, net, (b,) = ClassifierTask(), _net(), _batches(n=(5,))
    with torch.no_grad():
        assert float(task.loss(net, b)) == pytest.approx(float(F.cross_entropy(net(b["x"]), b["y"])))
    with pytest.raises(KeyError, match="prepare"):
        task.loss(net, {"x": b["x"]})


class HFImage(nn.Module):
    """Takes ``pixel_values=`` and returns an object with ``.logits`` (an HF ModelOutput's shape)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, pixel_values):
        from transformers.modeling_outputs import ImageClassifierOutput
        return ImageClassifierOutput(logits=self.conv(pixel_values).mean((2, 3)))


class HFText(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return {"logits": self.fc((self.emb(input_ids) * m).sum(1) / m.sum(1))}


def test_input_modes_and_output_shapes():
    torch.manual_seed(0)
    img = ClassifierTask(inputs="pixel_values")
    (b,) = img.prepare(HFImage().eval(), [{"x": torch.randn(4, 3, 6, 6)}])
    assert b["ref_logits"].shape == (4, 5)
    assert math.isclose(float(b["ref_logits"].exp().sum()), 4, rel_tol=1e-5)
    txt = ClassifierTask(inputs="text")
    batch = {"input_ids": torch.randint(0, 20, (3, 5)), "attention_mask": torch.ones(3, 5, dtype=torch.long)}
    (tb,) = txt.prepare(HFText().eval(), [batch])
    assert tb["ref_logits"].shape == (3, 3) and txt.evaluate(HFText().eval(), [tb])["samples"] == 3
    with pytest.raises(ValueError, match="unknown classifier inputs"):
        ClassifierTask(inputs="audio")


def test_first_tensor():
    t = torch.ones(2, 3)
    assert first_tensor(t) is t
    assert first_tensor((t, torch.zeros(1))) is t
    assert first_tensor({"logits": t, "aux": 1}) is t
    assert first_tensor({"out": t}) is t
    assert first_tensor([(t,)]) is t
    with pytest.raises(TypeError, match="not a tensor of logits"):
        first_tensor("nope")


def test_an_encoders_float_metrics_come_from_its_references_exactly():
    """The evaluate phase skips the float model's pass for an embedding task: the metrics from
    the attached references equal a real evaluation of the float model bit for bit."""
    from proxies.tasks import EmbeddingTask
    from workers.sources import load_model
    from workers.batches import plan_for, prepared_batches
    lm = load_model("builtin:minilm-l6")
    plan = plan_for(lm)
    plan.n_eval = 64
    _, evals, _ = prepared_batches(lm, plan)
    task = lm.task
    assert isinstance(task, EmbeddingTask)
    assert task.float_metrics(evals) == task.evaluate(lm.model, evals)
