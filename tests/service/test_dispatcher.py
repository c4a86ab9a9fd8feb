"""The progress bar arithmetic: monotone within a budget point and across points, below 1
until the job has really finished."""
from __future__ import annotations

from service.dispatcher import WEIGHTS, overall


def test_progress_is_monotone_over_phases_and_points():
    seq = [overall(p, f, point, 3) for point in range(3) for p in WEIGHTS for f in (0.0, 0.5, 1.0)]
    assert seq == sorted(seq)
    assert seq[0] == 0.0 and max(seq) < 1.0
    assert abs(sum(WEIGHTS.values()) - 1.0) < 1e-9


def test_out_of_range_fractions_are_clamped():
    assert overall("sensitivity", -1, 0, 1) == overall("sensitivity", 0, 0, 1)
    assert overall("sensitivity", 7, 0, 1) == overall("sensitivity", 1, 0, 1)
