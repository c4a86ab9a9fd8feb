"""Calibration and evaluation data: deterministic, never overlapping (DESIGN §6), with errors
that say what is accepted."""
from __future__ import annotations

import dataclasses

import json

import numpy as np
import pytest
import torch

from workers import digits
from workers.batches import build_batches, plan_for, prepared_batches
from workers.data import CALIB_FRACTION, TEXT_SOURCES, DataError, labeled_paragraphs, paragraphs, split_sources


# ---------------------------------------------------------------- sources and splits


def test_same_source_splits_ninety_ten_without_overlap():
    cal, ev = split_sources("pydoc", "pydoc")
    allp = paragraphs("pydoc")
    assert cal + ev == allp  # in order, nothing lost
    assert len(cal) == int(len(allp) * CALIB_FRACTION) and CALIB_FRACTION == 0.9
    assert not set(cal) & set(ev)


def test_same_builtin_text_source_splits_without_overlap():
    cal, ev = split_sources("wikitext2-valid", "wikitext2-valid")
    assert len(cal) / (len(cal) + len(ev)) == pytest.approx(0.9, abs=0.01)
    assert not set(cal) & set(ev)
    assert all(not (p.startswith("= ") and p.endswith(" =")) for p in cal[:200])  # headings dropped


def test_different_sources_are_used_whole():
    cal, ev = split_sources("pydoc", "tinyshakespeare")
    assert cal == paragraphs("pydoc")
    assert ev == paragraphs("tinyshakespeare")


def test_paragraphs_are_deterministic():
    assert paragraphs("tinyshakespeare") == paragraphs("tinyshakespeare")


def test_unknown_source_lists_the_accepted_ones():
    with pytest.raises(DataError) as err:
        split_sources("nope", "pydoc")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in TEXT_SOURCES:
        assert name in msg


def test_txt_file_is_split_into_paragraphs(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("first paragraph\nstill first\n\nsecond one\n\n\nthird\n", encoding="utf-8")
    assert paragraphs(f"file:{f}") == ["first paragraph\nstill first", "second one", "third"]
    cal, ev = split_sources(f"file:{f}", f"file:{f}")
    assert cal == ["first paragraph\nstill first", "second one"] and ev == ["third"]


def test_txt_file_without_blank_lines_uses_lines(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("a\nb\nc\n", encoding="utf-8")
    assert paragraphs(f"file:{f}") == ["a", "b", "c"]


def test_jsonl_file_reads_the_text_field(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["alpha", "beta", "gamma"])) + "\n\n",
                 encoding="utf-8")
    assert paragraphs(f"file:{f}") == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("bad", ['{"content": "x"}', "not json", "[1, 2]"])
def test_jsonl_line_without_text_names_the_line(tmp_path, bad):
    f = tmp_path / "corpus.jsonl"
    f.write_text('{"text": "ok"}\n\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: .*'text'"):
        paragraphs(f"file:{f}")


def test_missing_file_is_named(tmp_path):
    for prefix in ("file:", "text:", "jsonl:"):
        with pytest.raises(DataError, match="does not exist"):
            paragraphs(f"{prefix}{tmp_path / 'missing.txt'}")


def test_text_and_jsonl_prefixes_alias_file(tmp_path):
    t = tmp_path / "notes.md"  # text: splits paragraphs whatever the suffix
    t.write_text("one\n\ntwo\n\nthree\n", encoding="utf-8")
    assert paragraphs(f"text:{t}") == ["one", "two", "three"]
    j = tmp_path / "records.json"  # jsonl: reads the text field whatever the suffix
    j.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n', encoding="utf-8")
    assert paragraphs(f"jsonl:{j}") == ["a", "b"]
    assert labeled_paragraphs(f"jsonl:{j}") == (["a", "b"], [1, 0])
    assert labeled_paragraphs(f"jsonl:{j}", "text", "label") == (["a", "b"], [1, 0])
    assert split_sources(f"text:{t}", f"jsonl:{j}") == (["one", "two", "three"], ["a", "b"])
    with pytest.raises(DataError, match=r"records\.json:1: .*'sentence'"):
        paragraphs(f"jsonl:{j}", "sentence")
    with pytest.raises(DataError, match="give a path"):
        paragraphs("text:")


def test_jsonl_labels_must_be_all_or_none(tmp_path):
    j = tmp_path / "c.jsonl"
    j.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="1 of 2 records have no label"):
        labeled_paragraphs(f"jsonl:{j}")
    j.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert labeled_paragraphs(f"jsonl:{j}") == (["a", "b"], None)


def test_image_and_tensor_sources_are_not_text(tmp_path):
    for src in (f"images:{tmp_path}", f"tensors:{tmp_path}/x.npz", "digits"):
        with pytest.raises(DataError, match="is not text"):
            paragraphs(src)


def test_single_paragraph_cannot_be_split(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("only one line\n", encoding="utf-8")
    with pytest.raises(DataError, match="too little text"):
        split_sources(f"file:{f}", f"file:{f}")


def test_overlapping_sources_are_refused(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x\n\ny\n\nz\n", encoding="utf-8")
    b.write_text("y\n\nz\n\nw\n", encoding="utf-8")
    with pytest.raises(DataError, match="overlaps"):
        split_sources(f"file:{a}", f"file:{b}")


# ---------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def digits_lm():
    from workers.sources import load_model
    return load_model("builtin:digits-cnn")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_digits_calibration_and_evaluation_are_disjoint(digits_lm):
    calib, ev, info = build_batches(digits_lm, plan_for(digits_lm))
    xc, _ = digits.split("calib")
    xe, _ = digits.split("eval")
    got_c = torch.cat([b["x"] for b in calib])
    got_e = torch.cat([b["x"] for b in ev])
    assert torch.equal(got_c, xc) and torch.equal(got_e, xe)
    assert info["samples"] == len(xc) == 256
    # the underlying index sets of the fixed permutation do not meet
    _, _, perm = digits.digits_arrays()
    assert not set(perm[:digits.CALIB]) & set(perm[digits.TRAIN:])
    # and no calibration image appears among the evaluation images
    assert not _rows(got_c) & _rows(got_e)


def test_digits_batches_respect_counts_and_batch_size(digits_lm):
    calib, ev, info = build_batches(digits_lm, plan_for(digits_lm, n_calib=100, n_eval=50))
    assert [len(b["y"]) for b in calib] == [100] and [len(b["y"]) for b in ev] == [50]
    assert info["samples"] == 100


def test_calibration_hash_is_deterministic(digits_lm):
    a = build_batches(digits_lm, plan_for(digits_lm, seed=0))[2]
    b = build_batches(digits_lm, plan_for(digits_lm, seed=0))[2]
    assert a["sha256"] == b["sha256"] and len(a["sha256"]) == 64
    assert build_batches(digits_lm, plan_for(digits_lm, n_calib=128))[2]["sha256"] != a["sha256"]


def test_prepared_batches_carry_the_float_targets(digits_lm):
    plan = plan_for(digits_lm, n_calib=64, n_eval=32)
    calib, ev, info = prepared_batches(digits_lm, plan)
    raw_c, raw_e, raw_info = build_batches(digits_lm, plan)
    assert info == raw_info and [len(b["y"]) for b in calib] == [64] and [len(b["y"]) for b in ev] == [32]
    with torch.no_grad():  # the float model's log-probabilities
        assert torch.equal(calib[0]["ref_logits"], torch.log_softmax(digits_lm.model(raw_c[0]["x"]).float(), -1))
        assert torch.equal(ev[0]["ref_logits"], torch.log_softmax(digits_lm.model(raw_e[0]["x"]).float(), -1))
    # a worker that never evaluates gets the same calibration and no held-out batches
    calib_only, none, _ = prepared_batches(digits_lm, plan, with_evals=False)
    assert none == [] and torch.equal(calib_only[0]["ref_logits"], calib[0]["ref_logits"])


def test_classifier_refuses_text_data(digits_lm):
    with pytest.raises(DataError, match="'pydoc'.*digits"):
        plan_for(digits_lm, calib="pydoc")
    for bad in ({"n_eval": -1}, {"n_calib": 0}, {"n_eval": 0}):  # 0 is refused, not taken as "default"
        with pytest.raises(DataError, match=">= 1"):
            plan_for(digits_lm, **bad)


@pytest.fixture(scope="module")
def minilm():
    from workers.sources import load_model
    return load_model("builtin:minilm-l6")


@pytest.mark.integration
def test_text_calibration_depends_on_seed_only(minilm):
    plan = lambda seed: plan_for(minilm, "pydoc", "pydoc", n_calib=8, n_eval=4, seq_len=16, seed=seed)
    c0, e0, i0 = build_batches(minilm, plan(0))
    c0b, e0b, i0b = build_batches(minilm, plan(0))
    c1, e1, i1 = build_batches(minilm, plan(1))
    assert i0["sha256"] == i0b["sha256"]
    assert i0["sha256"] != i1["sha256"]  # a different calibration sample
    # evaluation is the fixed held-out head of the 10% split, whatever the seed
    assert torch.equal(e0[0]["input_ids"], e1[0]["input_ids"])
    assert i0["samples"] == 8 and c0[0]["input_ids"].shape[1] <= 16
    # calibration sentences come from the 90% part, evaluation from the 10% part
    tok = minilm.tokenizer
    cal_p, ev_p = split_sources("pydoc", "pydoc")
    ev_text = {tok.decode(ids, skip_special_tokens=True) for b in e0 for ids in b["input_ids"]}
    cal_text = {tok.decode(ids, skip_special_tokens=True) for b in c0 + c1 for ids in b["input_ids"]}
    assert not ev_text & cal_text
    assert np.all([b["attention_mask"].shape == b["input_ids"].shape for b in c0 + e0])


@pytest.mark.integration
def test_text_evaluation_is_batched_by_length_over_the_same_paragraphs(minilm):
    """The held-out set is the first n paragraphs whatever the grouping; grouped by token count,
    each batch pads to little more than its own texts (its metrics are means over samples)."""
    plan = plan_for(minilm, "wikitext2-valid", "wikitext2-test", n_calib=8, n_eval=256, seq_len=64)  # batches of 32
    _, ev, _ = build_batches(minilm, plan)
    tok = minilm.tokenizer
    _, ev_p = split_sources("wikitext2-valid", "wikitext2-test")
    first = tok(ev_p[:256], truncation=True, max_length=64)["input_ids"]
    got = [ids[m.bool()].tolist() for b in ev for ids, m in zip(b["input_ids"], b["attention_mask"])]
    assert sorted(map(tuple, got)) == sorted(map(tuple, first))  # the same samples, each once
    lengths = [len(ids) for ids in got]
    assert lengths == sorted(lengths)
    padded = sum(b["attention_mask"].numel() for b in ev)
    in_order = sum(32 * max(map(len, first[i:i + 32])) for i in range(0, 256, 32))
    assert padded < 0.95 * in_order  # wikitext-2 test: 13% padding in order, 5% grouped


def test_gptq_hessian_data_is_apart_from_calibration_and_evaluation(digits_lm):
    from workers.batches import hessian_batches
    plan = plan_for(digits_lm)
    calib, ev, _ = build_batches(digits_lm, plan)
    hb, n = hessian_batches(digits_lm, plan)
    assert n == 512
    h = _rows(torch.cat([b["x"] for b in hb]))
    assert not h & _rows(torch.cat([b["x"] for b in calib])) and not h & _rows(torch.cat([b["x"] for b in ev]))


def test_text_hessian_picks_avoid_the_calibration_picks():
    from workers.batches import _calib_pick, _other_pick
    for count, n_calib, n in ((71, 8, 64), (1000, 32, 256), (40, 40, 8)):
        used = set(_calib_pick(n_calib, 3)(count).tolist())
        other = _other_pick(n_calib, n, 3)(count)
        assert len(other) == min(n, count - len(used)) and not used & set(other.tolist())
        assert np.array_equal(other, _other_pick(n_calib, n, 3)(count))  # deterministic


@pytest.mark.integration
def test_text_hessian_batches_count_what_the_source_has_left(minilm):
    from workers.batches import hessian_batches
    plan = plan_for(minilm, "pydoc", "pydoc", n_calib=8, n_eval=4, seq_len=16, seed=3)
    hb, n = hessian_batches(minilm, plan, 64)
    assert n == min(64, len(split_sources("pydoc", "pydoc")[0]) - 8) == sum(len(b["input_ids"]) for b in hb)
    # a source with nothing left beyond the calibration samples gives nothing (the caller falls back)
    # the whole source as calibration (past a job's limits, which plan_for enforces)
    small = dataclasses.replace(plan_for(minilm, "pydoc", "pydoc", n_calib=8, n_eval=4, seq_len=16), n_calib=100_000)
    assert hessian_batches(minilm, small, 8) == ([], 0)


def test_judge_picks_avoid_the_calibration_and_hessian_picks():
    from workers.batches import _calib_pick, _judge_pick, _other_pick
    for count, n_calib, n_h, n in ((71, 8, 16, 64), (1000, 32, 256, 256), (1000, 32, 0, 256), (40, 40, 8, 8)):
        taken = set(_calib_pick(n_calib, 3)(count).tolist()) | set(_other_pick(n_calib, n_h, 3)(count).tolist())
        judge = _judge_pick(n_calib, n_h, n, 3)(count)
        assert len(judge) == min(n, count - len(taken)) and not taken & set(judge.tolist())
        assert np.array_equal(judge, _judge_pick(n_calib, n_h, n, 3)(count))  # deterministic


def test_digits_judge_data_is_apart_from_calibration_hessians_and_evaluation(digits_lm):
    from workers.batches import hessian_batches, judge_batches
    plan = plan_for(digits_lm)
    calib, ev, _ = build_batches(digits_lm, plan)
    hb, _ = hessian_batches(digits_lm, plan)
    jb, n = judge_batches(digits_lm, plan, n_hessian=512)
    assert n == 256 == sum(len(b["y"]) for b in jb)
    j = _rows(torch.cat([b["x"] for b in jb]))
    for other in (calib, ev, hb):
        assert not j & _rows(torch.cat([b["x"] for b in other]))
    assert judge_batches(digits_lm, plan, 0) == ([], 0)


@pytest.mark.integration
def test_text_judge_batches_are_apart_and_count_what_the_source_has_left(minilm):
    from workers.batches import judge_batches
    # wikitext: pydoc's topics repeat texts under several keys, so disjoint picks can share a text
    plan = plan_for(minilm, "wikitext2-valid", "wikitext2-test", n_calib=8, n_eval=4, seq_len=32, seed=3)
    jb, n = judge_batches(minilm, plan, 32)
    assert n == 32 == sum(len(b["input_ids"]) for b in jb)
    tok = minilm.tokenizer
    text = lambda batches: {tok.decode(ids, skip_special_tokens=True) for b in batches for ids in b["input_ids"]}
    calib, ev, _ = build_batches(minilm, plan)
    assert not text(jb) & text(calib) and not text(jb) & text(ev)
    # the whole source as calibration (past a job's limits, which plan_for enforces)
    small = dataclasses.replace(plan_for(minilm, "pydoc", "pydoc", n_calib=8, n_eval=4, seq_len=16), n_calib=100_000)
    assert judge_batches(minilm, small, 8) == ([], 0)
