"""From ``submit``'s arguments to the job request: budgets (with ``--sweep`` points) and
``--calib``/``--eval`` values, where a local file or folder is uploaded first and named by the
``upload:<id>`` the server returns. The image/dataset fields come from the one function that
``search`` uses too (service.cli.args.data_kwargs)."""
from __future__ import annotations

from pathlib import Path

BUILTIN_DATA = ("wikitext2-valid", "wikitext2-test", "tinyshakespeare", "pydoc", "digits")
SERVER_PREFIXES = ("upload:", "images:", "tensors:", "text:", "jsonl:", "dataset:", "file:")


def request_data(c, value: str | None, flag: str) -> dict:
    """A --calib/--eval value as the request's data: inline text (@FILE), a source the server
    knows (builtin name, upload:<id>, server-side path), or a local path uploaded first."""
    if value is None:
        return {}
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ValueError(f"{flag} {value}: no such file")
        return {"text": path.read_text(encoding="utf-8", errors="replace")}
    if value in BUILTIN_DATA or value.startswith(SERVER_PREFIXES) or not Path(value).exists():
        return {"source": value}
    rec = c.upload_data(value)
    print(f"uploaded {value} as {rec.source} ({describe_data(rec)})", flush=True)
    return {"source": rec.source}


def describe_data(rec) -> str:
    """An upload's record in one line: kind, samples, classes and size."""
    classes = f", {len(rec.classes)} classes ({', '.join(rec.classes[:8])}{', …' if len(rec.classes) > 8 else ''})" \
        if rec.classes else ""
    return f"{rec.kind}, {rec.samples} samples{classes}, {rec.bytes} bytes"


def budgets(args) -> dict | list[dict]:
    """``--budget`` constraints as one budget, or with ``--sweep`` one budget per point."""
    from search.budgets import parse_budget
    base = dict(parse_budget(b) for b in args.budget)
    if not args.sweep:
        return base
    metric, _, values = args.sweep.partition("=")
    try:
        points = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {args.sweep!r}: give METRIC=V1,V2,… with numbers") from None
    if not metric or not points:
        raise ValueError(f"--sweep {args.sweep!r}: give METRIC=V1,V2,…")
    return [base] + [{**base, metric: v} for v in points]
