"""The racing refine judge on a small real network: exact where it answers a number, early
(and ``inf``) only for a candidate already behind the best policy on the same batches."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from proxies.evaluate import Evaluator
from proxies.tasks import ClassifierTask
from search.formats import make_formats

FORMATS = make_formats([2, 8], None, False)  # per channel: index 0 = 2-bit, 1 = 8-bit
LOW, HIGH = np.zeros(2, dtype=int), np.ones(2, dtype=int)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].weight.mul_(4)  # confident logits: labels from the float model are easy to keep
        x = torch.randn(4 * 32, 16)
        y = model(x).argmax(-1)
    batches = [{"x": a, "y": b} for a, b in zip(x.split(32), y.split(32))]
    return Evaluator(model, [model[0], model[2]], ClassifierTask()), batches


def test_without_racing_it_is_the_evaluator_loss(setup):
    ev, batches = setup
    judge = ev.judge(FORMATS, batches, race=False)
    for c in (HIGH, LOW, np.array([0, 1])):
        assert judge(c) == pytest.approx(ev.loss([FORMATS[k] for k in c], batches), rel=1e-6)
    assert judge.batches_run == 3 * len(batches) and judge.stopped_early == 0


def test_a_loser_is_stopped_after_its_first_batch_and_a_winner_is_exact(setup):
    ev, batches = setup
    low, high = (ev.loss([FORMATS[k] for k in c], batches) for c in (LOW, HIGH))
    assert high < low  # the setup: 8-bit keeps the float labels better than 2-bit
    judge = ev.judge(FORMATS, batches)
    assert judge.samples == 4 * 32
    assert judge(HIGH) == pytest.approx(high, rel=1e-6)  # nothing to race against yet: measured whole
    assert judge.batches_run == len(batches)
    assert math.isinf(judge(LOW))
    assert judge.batches_run == len(batches) + 1 and judge.stopped_early == 1
    judge.reset()  # a new search: the 2-bit policy is measured whole, then 8-bit beats it exactly
    assert judge(LOW) == pytest.approx(low, rel=1e-6)
    assert judge(HIGH) == pytest.approx(high, rel=1e-6)
    assert judge.stopped_early == 1


def test_a_judge_needs_batches(setup):
    ev, _ = setup
    with pytest.raises(ValueError, match="at least one batch"):
        ev.judge(FORMATS, [])
