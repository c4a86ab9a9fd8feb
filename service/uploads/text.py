"""Text uploads: ``text`` (UTF-8, paragraphs separated by blank lines) and ``jsonl`` (one JSON
object with a ``text`` string per line), counted the way the workers will split them."""
from __future__ import annotations

import json
from pathlib import Path

from service.uploads.common import ACCEPTED, invalid


def store_text(tmp: Path, name: str, staging: Path, kind: str) -> dict:
    """Check the text and keep it: the record's samples (paragraphs or lines) and path."""
    raw = tmp.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"{name} is not UTF-8 text (byte {e.start} is not); save it as UTF-8, or {ACCEPTED}") from None
    if "\x00" in text:
        raise invalid(f"{name} holds NUL bytes, so it is not text; {ACCEPTED}")
    if kind == "jsonl":
        n = _jsonl_rows(text, name)
        dst = staging / "data.jsonl"
    else:
        from workers.data import text_paragraphs  # torch-free
        n = len(text_paragraphs(text))
        if not n:
            raise invalid(f"{name} is empty; give some text (paragraphs separated by blank lines)")
        dst = staging / "data.txt"
    dst.write_bytes(raw)
    return {"samples": n, "classes": None, "path": dst.name}


def _jsonl_rows(text: str, name: str) -> int:
    """The JSONL rows (blank lines skipped), each an object with a ``text`` string."""
    n = 0
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise invalid(f"{name} line {i} is not JSON; each line needs an object such as "
                          '{"text": "…"}') from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise invalid(f"{name} line {i} has no \"text\" string; each line needs an object such as "
                          '{"text": "…"}')
        n += 1
    if not n:
        raise invalid(f"{name} has no lines; give one JSON object with a \"text\" field per line")
    return n
