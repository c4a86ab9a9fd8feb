"""Calibration and evaluation text/data, deterministic and never overlapping.

Sources: ``wikitext2-valid``, ``wikitext2-test``, ``tinyshakespeare`` (from ``../shared/data/text``
or ``$BITPLAN_DATA_DIR``), ``pydoc`` (CPython's ``pydoc_data.topics``), and ``file:PATH`` (a
.txt file split into paragraphs, or .jsonl with a ``text`` field). When calibration and
evaluation name the same source, the first 90% of its paragraphs calibrate and the last 10%
evaluate; different sources are used whole."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

BUILTIN_TEXT = {"wikitext2-valid": "wikitext2-valid.txt", "wikitext2-test": "wikitext2-test.txt",
                "tinyshakespeare": "tinyshakespeare.txt"}
TEXT_SOURCES = (*BUILTIN_TEXT, "pydoc", "file:PATH")
CALIB_FRACTION = 0.9


class DataError(ValueError):
    """A data source that does not exist or is unusable; says what is accepted."""


def data_dir() -> Path:
    env = os.environ.get("BITPLAN_DATA_DIR")
    candidates = [Path(env)] if env else []
    root = Path(__file__).resolve().parents[1]
    candidates += [root.parent / "shared" / "data" / "text", Path.cwd().parent / "shared" / "data" / "text"]
    for c in candidates:
        if (c / "wikitext2-test.txt").exists():
            return c
    raise DataError(f"cannot find the shared text corpora; looked in {[str(c) for c in candidates]}; set BITPLAN_DATA_DIR")


def _paragraphs_wikitext(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not re.fullmatch(r"(= )+.*( =)+", s):
            out.append(s)
    return out


def _paragraphs_blank(text: str) -> list[str]:
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return paras if len(paras) > 1 else [l.strip() for l in text.splitlines() if l.strip()]


def paragraphs(source: str) -> list[str]:
    """All paragraphs of a source, in a fixed order."""
    if source in BUILTIN_TEXT:
        text = (data_dir() / BUILTIN_TEXT[source]).read_text(encoding="utf-8")
        return _paragraphs_wikitext(text) if source.startswith("wikitext") else _paragraphs_blank(text)
    if source == "pydoc":
        from pydoc_data.topics import topics
        return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    if source.startswith("file:"):
        path = Path(source[5:])
        if not path.is_file():
            raise DataError(f"data file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".jsonl":
            out = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        out.append(str(json.loads(line)["text"]))
                    except (ValueError, KeyError, TypeError):
                        raise DataError(f"{path}:{n}: each JSONL line needs a 'text' field") from None
            return out
        return _paragraphs_blank(text)
    raise DataError(f"unknown data source {source!r}: use one of {', '.join(TEXT_SOURCES)}")


def split_sources(calib: str, evaluation: str) -> tuple[list[str], list[str]]:
    """Calibration and evaluation paragraphs; a shared source is split 90/10 so they never overlap."""
    if calib == evaluation:
        paras = paragraphs(calib)
        if len(paras) < 2:
            raise DataError(f"source {calib!r} has too little text to split into calibration and evaluation")
        cut = max(1, min(len(paras) - 1, int(len(paras) * CALIB_FRACTION)))
        return paras[:cut], paras[cut:]
    cal, ev = paragraphs(calib), paragraphs(evaluation)
    if not cal or not ev:
        raise DataError(f"empty data source: {calib if not cal else evaluation!r}")
    overlap = set(cal) & set(ev)
    if overlap and len(overlap) > 0.01 * min(len(cal), len(ev)):
        raise DataError(f"evaluation data {evaluation!r} overlaps calibration data {calib!r}; choose disjoint sources")
    return cal, [p for p in ev if p not in overlap]
