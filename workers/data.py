"""Calibration and evaluation text/data, deterministic and never overlapping.

Sources: ``wikitext2-valid``, ``wikitext2-test``, ``tinyshakespeare`` (shipped gzip-compressed in
``workers/corpora``, or plain ``.txt`` files in ``$BITPLAN_DATA_DIR``), ``pydoc`` (CPython's ``pydoc_data.topics``), ``text:FILE`` (a
text file split into paragraphs), ``jsonl:FILE`` (one JSON object a line, its ``text`` field), ``file:PATH`` (either,
by suffix) and ``dataset:DIR`` (a Hugging Face dataset saved to disk, its text column). When calibration and
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
TEXT_SOURCES = (*BUILTIN_TEXT, "pydoc", "text:FILE", "jsonl:FILE", "file:PATH", "dataset:DIR")
FILE_PREFIXES = ("file:", "text:", "jsonl:")
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


def _jsonl(path: Path, text: str, column: str | None, label_column: str | None) -> tuple[list[str], list | None]:
    field = column or "text"
    out, labels = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append(str(rec[field]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: each JSONL line needs a {field!r} field") from None
        lab = rec.get(label_column or "label", rec.get("labels") if label_column is None else None)
        if label_column is not None and lab is None:
            raise DataError(f"{path}:{n}: no {label_column!r} field (the label column)")
        labels.append(lab)
    if not any(l is not None for l in labels):
        return out, None
    missing = [i for i, l in enumerate(labels) if l is None]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(labels)} records have no label (the first is record "
                        f"{missing[0] + 1}): label every record or none")
    return out, labels


def _file_paragraphs(source: str, column: str | None = None, label_column: str | None = None
                     ) -> tuple[list[str], list | None]:
    prefix = next(p for p in FILE_PREFIXES if source.startswith(p))
    path = Path(source[len(prefix):]).expanduser()
    if not source[len(prefix):]:
        raise DataError(f"{source!r}: give a path after {prefix!r}")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if prefix == "jsonl:" or (prefix == "file:" and path.suffix == ".jsonl"):
        return _jsonl(path, text, column, label_column)
    return text_paragraphs(text), None


def labeled_paragraphs(source: str, column: str | None = None, label_column: str | None = None
                       ) -> tuple[list[str], list | None]:
    """All texts of a source in a fixed order, and their raw labels (a JSONL ``label`` field or
    ``label_column``; a dataset's label column) or None."""
    if source.startswith(FILE_PREFIXES):
        return _file_paragraphs(source, column, label_column)
    if source.startswith("dataset:"):
        from workers.samples import open_samples
        s = open_samples(source, "text", column, label_column)
        if s.modality != "text":
            raise DataError(f"{source}: column {s.col!r} is not text: name the text column with --data-column")
        return s.inputs(range(len(s))), None if s.labels is None else s.labels.tolist()
    if source.startswith(("images:", "tensors:")) or source == "digits":
        raise DataError(f"{source!r} is not text: this model reads text; use one of {', '.join(TEXT_SOURCES)}")
    return paragraphs(source), None


def paragraphs(source: str, column: str | None = None) -> list[str]:
    """All paragraphs of a source, in a fixed order."""
    if source in BUILTIN_TEXT:
        text = _builtin_text(builtin_text_path(source))
        return _paragraphs_wikitext(text) if source.startswith("wikitext") else text_paragraphs(text)
    if source == "pydoc":
        from pydoc_data.topics import topics
        return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    if source.startswith(FILE_PREFIXES) or source.startswith(("dataset:", "images:", "tensors:")) or source == "digits":
        return labeled_paragraphs(source, column)[0]
    raise DataError(f"unknown data source {source!r}: use one of {', '.join(TEXT_SOURCES)}")


def split_sources(calib: str, evaluation: str, column: str | None = None) -> tuple[list[str], list[str]]:
    """Calibration and evaluation paragraphs; a shared source is split 90/10 so they never overlap."""
    if calib == evaluation:
        paras = paragraphs(calib, column)
        if len(paras) < 2:
            raise DataError(f"source {calib!r} has too little text to split into calibration and evaluation")
        cut = max(1, min(len(paras) - 1, int(len(paras) * CALIB_FRACTION)))
        return paras[:cut], paras[cut:]
    cal, ev = paragraphs(calib, column), paragraphs(evaluation, column)
    if not cal or not ev:
        raise DataError(f"empty data source: {calib if not cal else evaluation!r}")
    overlap = set(cal) & set(ev)
    if overlap and len(overlap) > 0.01 * min(len(cal), len(ev)):
        raise DataError(f"evaluation data {evaluation!r} overlaps calibration data {calib!r}; choose disjoint sources")
    return cal, [p for p in ev if p not in overlap]
