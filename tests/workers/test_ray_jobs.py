"""Pure pieces of the Ray side: how sensitivity rows are dealt to workers."""
from __future__ import annotations

from workers.ray_jobs import chunk_rows


def test_chunks_cover_every_row_once_and_mix_early_and_late_rows():
    parts = chunk_rows(36, 4)
    flat = sorted(r for p in parts for r in p)
    assert flat == list(range(36)) and len(parts) == 4
    assert all(len(p) == 9 for p in parts)
    # every chunk gets rows from the start and from the end of the model (costs differ by depth)
    assert all(min(p) < 4 and max(p) >= 32 for p in parts)


def test_more_chunks_than_rows_and_one_chunk():
    assert chunk_rows(3, 8) == [[0], [1], [2]]
    assert chunk_rows(5, 1) == [[0, 1, 2, 3, 4]]
