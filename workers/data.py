"""Calibration and evaluation text/data, deterministic and never overlapping.

Sources: ``wikitext2-valid``, ``wikitext2-test``, ``tinyshakespeare`` (shipped gzip-compressed in
``workers/corpora``, or plain ``.txt`` files in ``$BITPLAN_DATA_DIR``), ``pydoc`` (CPython's ``pydoc_data.topics``), and ``file:PATH`` (a
.txt file split into paragraphs, or .jsonl with a ``text`` field). When calibration and
evaluation name the same source, the first 90% of its paragraphs calibrate and the last 10%
evaluate; different sources are used whole."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path

BUILTIN_TEXT = {"wikitext2-valid": "wikitext2-valid.txt", "wikitext2-test": "wikitext2-test.txt",
                "tinyshakespeare": "tinyshakespeare.txt"}
TEXT_SOURCES = (*BUILTIN_TEXT, "pydoc", "file:PATH")
CALIB_FRACTION = 0.9


class DataError(ValueError):
    """A data source that does not exist or is unusable; says what is accepted."""


# sha256 of each shipped corpus after decompression: a truncated or altered install fails loudly
# instead of calibrating on other text than the one the README's numbers were measured on.
CORPUS_SHA256 = {
    "wikitext2-valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wikitext2-test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
}
PACKAGED_DIR = Path(__file__).resolve().parent / "corpora"


def data_dir() -> Path | None:
    """The override folder ``$BITPLAN_DATA_DIR`` (plain .txt files), or None for the shipped data."""
    env = os.environ.get("BITPLAN_DATA_DIR")
    if not env:
        return None
    d = Path(env)
    if not (d / "wikitext2-test.txt").exists():
        raise DataError(f"BITPLAN_DATA_DIR={env} has no wikitext2-test.txt; unset it to use the shipped corpora")
    return d


def builtin_text_path(source: str) -> Path:
    """Where a builtin corpus is read from: the override folder or the package's own gzip file."""
    name = BUILTIN_TEXT[source]
    d = data_dir()
    return d / name if d is not None else PACKAGED_DIR / f"{name}.gz"


def missing_corpora() -> list[str]:
    """Builtin corpora that cannot be read (for readiness checks); empty when all are there."""
    try:
        return [s for s in BUILTIN_TEXT if not builtin_text_path(s).is_file()]
    except DataError:
        return list(BUILTIN_TEXT)


@lru_cache(maxsize=8)
def _builtin_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"corpus file {path.name} is missing from this install; reinstall bitplan "
                        "or point BITPLAN_DATA_DIR at a folder with the .txt files")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
        want = CORPUS_SHA256.get(path.name[:-3])
        if want and hashlib.sha256(raw).hexdigest() != want:
            raise DataError(f"corpus file {path.name} is corrupt (sha256 mismatch); reinstall bitplan")
    return raw.decode("utf-8")


def _paragraphs_wikitext(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not re.fullmatch(r"(= )+.*( =)+", s):
            out.append(s)
    return out


def text_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines (lines, when the text has only one): how uploaded
    and ``file:`` text is split."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return paras if len(paras) > 1 else [l.strip() for l in text.splitlines() if l.strip()]


def paragraphs(source: str) -> list[str]:
    """All paragraphs of a source, in a fixed order."""
    if source in BUILTIN_TEXT:
        text = _builtin_text(builtin_text_path(source))
        return _paragraphs_wikitext(text) if source.startswith("wikitext") else text_paragraphs(text)
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
        return text_paragraphs(text)
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
