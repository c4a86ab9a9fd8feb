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
    judge = ev.judge(FORMATS, batches, screen=None)
    assert judge.samples == 4 * 32
    assert judge(HIGH) == pytest.approx(high, rel=1e-6)  # nothing to race against yet: measured whole
    assert judge.batches_run == len(batches)
    assert math.isinf(judge(LOW))
    assert judge.batches_run == len(batches) + 1 and judge.stopped_early == 1
    judge.reset()  # a new search: the 2-bit policy is measured whole, then 8-bit beats it exactly
    assert judge(LOW) == pytest.approx(low, rel=1e-6)
    assert judge(HIGH) == pytest.approx(high, rel=1e-6)
    assert judge.stopped_early == 1


def test_the_screen_stops_a_clear_loser_on_its_first_samples_and_races_the_rest_as_before(setup):
    """With the screen, the first batch is read in two parts (16 samples, then the rest): a
    candidate far behind the best stops after 16 samples; answers are the unscreened judge's."""
    ev, batches = setup
    plain, screened = ev.judge(FORMATS, batches, screen=None), ev.judge(FORMATS, batches)
    assert screened.screened and len(screened.batches) == len(batches) + 1
    assert [screened.task_size(b) for b in screened.batches[:2]] == [16, 16] if hasattr(screened, "task_size") else True
    assert screened.samples == plain.samples == 4 * 32
    assert screened(HIGH) == pytest.approx(plain(HIGH), rel=1e-6)  # a whole measurement, in five parts
    assert screened.batches_run == len(batches) + 1
    assert math.isinf(screened(LOW)) and math.isinf(plain(LOW))
    assert screened.screened_out == 1 and screened.batches_run == len(batches) + 2  # half a batch
    close = np.array([1, 0])  # nearer the best: not clearly behind on 16 samples, raced as before
    a, b = plain(close), screened(close)
    assert a == b or (math.isinf(a) and math.isinf(b))
    screened.reset()
    assert screened(LOW) == pytest.approx(plain.ev.loss([FORMATS[k] for k in LOW], batches), rel=1e-6)
    assert not ev.judge(FORMATS, batches, race=False).screened  # nothing to stop without racing


def test_a_judge_needs_batches(setup):
    ev, _ = setup
    with pytest.raises(ValueError, match="at least one batch"):
        ev.judge(FORMATS, [])


class Trunked(nn.Module):
    """A stem, a ModuleList trunk of residual blocks of two Linears each, and a head: the shape
    the incremental judge replays (the trunk's earlier blocks from the base policy's outputs)."""

    def __init__(self, width: int = 24, depth: int = 4):
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
                                    for _ in range(depth))
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks:
            h = h + blk(h)
        return self.head(h)


def trunked(seed: int, n_batches: int) -> tuple[Trunked, list[dict]]:
    """A seeded ``Trunked`` model and batches of 32 labelled by its own float predictions."""
    torch.manual_seed(seed)
    model = Trunked()
    with torch.no_grad():
        x = torch.randn(n_batches * 32, 16)
        y = model(x).argmax(-1)
    return model, [{"x": a, "y": b} for a, b in zip(x.split(32), y.split(32))]


def test_the_incremental_judge_answers_exactly_what_full_runs_answer():
    """Every candidate of a refine-like walk (one or two layers changed from the best policy,
    some accepted, some raced out) gets the same answer with the trunk replayed as without it,
    and the replay computes fewer blocks."""
    model, batches = trunked(1, 4)
    x, y = torch.cat([b["x"] for b in batches]), torch.cat([b["y"] for b in batches])
    modules = [model.stem] + [blk[j] for blk in model.blocks for j in (0, 2)] + [model.head]
    ev = Evaluator(model, modules, ClassifierTask())
    formats = make_formats([2, 3, 8], None, False)
    full, inc = ev.judge(formats, batches, incremental=False), ev.judge(formats, batches)
    assert inc.trunk is not None and inc.trunk.n_blocks == 4
    rng = np.random.default_rng(0)
    cur, cur_loss = np.full(len(modules), 2), math.inf
    for step in range(40):
        cand = cur.copy()
        for i in rng.choice(len(modules), size=int(rng.integers(1, 3)), replace=False):
            cand[i] = rng.integers(0, 3)
        a, b = full(cand), inc(cand)
        assert a == b or (math.isinf(a) and math.isinf(b)), step  # bit-identical, raced out alike
        if a < cur_loss:  # refine's rule: the judge's new best becomes the policy moves start from
            cur, cur_loss = cand, a
    assert inc.batches_run == full.batches_run and inc.blocks_run < inc.batches_run * 4
    with torch.no_grad():  # the model is float again afterwards
        assert torch.equal(model(x).argmax(-1), y)


@pytest.mark.parametrize("side_bytes", [256 << 20, 0])
def test_candidates_sharing_their_first_change_start_after_it(side_bytes):
    """Refine's moves come in families sharing one change: a candidate whose changes up to some
    block match an earlier candidate's (here block 1's layer, paired with a change in block 3,
    then in block 2) starts after the blocks that earlier run computed with only that change in
    effect, and answers exactly what a full run answers. Without a side store (0 bytes) it
    starts at its first changed block, as before."""
    model, batches = trunked(2, 3)
    modules = [blk[j] for blk in model.blocks for j in (0, 2)]  # layer 2i, 2i+1 in block i
    ev = Evaluator(model, modules, ClassifierTask())
    formats = make_formats([2, 8], None, False)
    full, inc = ev.judge(formats, batches, race=False, incremental=False), ev.judge(formats, batches, race=False)
    inc.trunk.side_bytes = side_bytes
    base = np.ones(len(modules), dtype=int)  # 8-bit everywhere: the best, so it stays the base
    assert full(base) == inc(base)
    runs = []
    for later in (6, 4, 7):  # block 3, block 2, block 3 again: each with block 1's layer 2 at 2 bits
        cand = base.copy()
        cand[[2, later]] = 0
        before = inc.blocks_run
        assert full(cand) == inc(cand)
        runs.append((inc.blocks_run - before) // len(batches))
    # with the store: blocks 1-3, then from block 2 (block 1 replayed), then from block 3 (1, 2 replayed)
    assert runs == ([3, 2, 1] if side_bytes else [3, 3, 3])
    assert bool(inc.trunk.side) == bool(side_bytes)


def test_swapped_rebinds_matching_weights_copies_others_and_restores_both():
    """A weight of the parameter's dtype/device/shape is swapped in without a copy (the judge
    swaps every layer per candidate); another dtype is copied in; both come back exactly, the
    swapped-in tensors are left untouched, and the Parameter objects keep their identity."""
    from proxies.base import swapped
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(3, 2)
    pa, pb = a.weight, b.weight
    fa, fb = pa.detach().clone(), pb.detach().clone()
    qa, qb = torch.zeros_like(fa), torch.ones(fb.shape, dtype=torch.float64)
    with swapped([a, b], [qa, qb]):
        assert a.weight is pa and b.weight is pb
        assert a.weight.data_ptr() == qa.data_ptr()  # rebound, not copied
        assert torch.equal(b.weight, torch.ones_like(fb))  # copied in, as float32
        with swapped([a], [torch.ones_like(fa)]):  # nested swaps unwind in order
            assert torch.equal(a.weight, torch.ones_like(fa))
        assert a.weight.data_ptr() == qa.data_ptr()
    assert torch.equal(pa, fa) and torch.equal(pb, fb)
    assert torch.equal(qa, torch.zeros_like(fa)) and torch.equal(qb, torch.ones(fb.shape, dtype=torch.float64))
    with pytest.raises(RuntimeError):  # restored even when the body fails
        with swapped([a], [qa]):
            raise RuntimeError("boom")
    assert torch.equal(pa, fa)
