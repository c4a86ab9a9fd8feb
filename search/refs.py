"""What a model reference points at, decided without torch (the API process uses it too):
``export:FILE`` (a torch.export program), ``torchscript:FILE``, ``hf:DIR``, a builtin name, or
a bare path recognised by its content — a ``.pt2``/zip holding ``archive_format`` is a
torch.export program, a zip holding ``code/`` and ``data.pkl`` is TorchScript, a directory with
``config.json`` is a Hugging Face model. A plain ``torch.save`` pickle is never loaded."""
from __future__ import annotations

import zipfile
from pathlib import Path

PATH_KINDS = ("export", "torchscript", "hf")


class RefError(ValueError):
    """A reference that names no loadable model; says what is accepted."""


def archive_kind(path: Path) -> str | None:
    """What a zip file holds: ``export`` (a torch.export program: ``archive_format`` or a
    serialized program JSON), ``torchscript`` (``code/`` beside ``data.pkl``), ``pickle`` (a
    ``torch.save`` zip: ``data.pkl`` without code), ``zip`` (anything else), None when it is not
    a readable zip. The one place that tells these apart, for the loader, the API and bare paths."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails or any(n.endswith(".json") and ("/models/" in n or "exported_program" in n)
                                        for n in names):
        return "export"
    if any(t.startswith("code/") for t in tails):
        return "torchscript"
    return "pickle" if "data.pkl" in tails else "zip"


def model_file_kind(path: Path) -> str:
    """``export`` | ``torchscript`` | ``hf`` for a file or folder, or RefError saying why not."""
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        raise RefError(f"{str(path)!r} is a directory without config.json, so not a Hugging Face model "
                       "(save one with model.save_pretrained(DIR))")
    if not path.is_file():
        raise RefError(f"no such file or directory {str(path)!r}")
    kind = archive_kind(path)
    if kind is None:
        raise RefError(f"{str(path)!r} is not a model archive: give a torch.export program (torch.export.save, "
                       ".pt2), a TorchScript archive (torch.jit.save) or a Hugging Face directory")
    if kind in ("export", "torchscript"):
        return kind
    if kind == "pickle":
        raise RefError(f"{str(path)!r} is a torch.save pickle (a state dict or pickled module), which bitplan never "
                       "loads (unpickling runs code): save the model with torch.export.save(torch.export.export("
                       "model, (example_input,)), 'model.pt2')")
    raise RefError(f"{str(path)!r} is a zip file but not a torch.export or TorchScript archive")


def resolve_bare(ref: str) -> str:
    """``./net.pt2`` → ``export:./net.pt2`` (and so on); a reference with a known prefix is
    returned as it is."""
    if ref.startswith(tuple(f"{k}:" for k in PATH_KINDS)) or ref.startswith("builtin:"):
        return ref
    p = Path(ref).expanduser()
    if not (p.exists() or ref.startswith((".", "/", "~")) or ref.endswith(".pt2")):
        return ref  # not a path: the loader says which references exist
    return f"{model_file_kind(p)}:{ref}"
