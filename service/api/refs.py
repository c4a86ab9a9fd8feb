"""Server-side model references: ``hf:``/``export:``/``torchscript:`` paths resolve against the
model root (Settings.model_root, BITPLAN_MODEL_ROOT) and never leave it; messages name the
caller's path, never the server's (``scrub``)."""
from __future__ import annotations

from pathlib import Path

from service.api.errors import ApiError

BUILTIN_REFS = ("builtin:minilm-l6", "builtin:smollm2-135m", "builtin:digits-cnn")
REF_HELP = ("use builtin:minilm-l6, builtin:smollm2-135m, builtin:digits-cnn, hf:<dir>, export:<file.pt2> or "
            "torchscript:<file> under the server's model root, or upload a torch.export (.pt2) or TorchScript file")
SERVER_REF_KINDS = ("hf:", "export:", "torchscript:")


def scrub(message: str, hide: dict[str, str]) -> str:
    """Replace server paths in a message by what the caller knows them as (longest first)."""
    for path in sorted(hide, key=len, reverse=True):
        if path:
            message = message.replace(path, hide[path])
    return message


def root_hide(root: Path | None) -> dict[str, str]:
    """The model root, as configured and resolved, for ``scrub``: paths under it become relative,
    the root itself 'the model root'."""
    if root is None:
        return {}
    given, resolved = str(root), str(root.resolve())
    return {resolved + "/": "", resolved: "the model root", given.rstrip("/") + "/": "", given: "the model root"}


def resolve_server_ref(ref: str, model_root: Path | None) -> str:
    """``hf:<dir>`` / ``torchscript:<file>`` with the path resolved against the model root
    (``hf:mymodel`` is ``<root>/mymodel``); an absolute path must lie inside the root. Runs in
    a worker thread (``resolve`` reads the file system)."""
    kind, _, path = ref.partition(":")
    if model_root is None:
        raise ApiError(403, "path_not_allowed", f"this server accepts no server-side paths ({kind}:…): its "
                       "administrator has not set BITPLAN_MODEL_ROOT; upload a TorchScript file instead")
    root = model_root.resolve()
    if not path.strip() or any(ord(c) < 32 for c in path):
        raise ApiError(422, "invalid_model", f"ref: {kind}: needs a path relative to the server's model root, "
                       f"e.g. {kind}:my-model")
    try:
        p = (root / path).resolve()  # an absolute path replaces the root here; checked below
    except (OSError, RuntimeError, ValueError):
        raise ApiError(422, "invalid_model", f"ref: {path!r} is not a usable path") from None
    if not p.is_relative_to(root):
        raise ApiError(403, "path_not_allowed", f"ref: {path!r} is outside the server's model root "
                       f"(BITPLAN_MODEL_ROOT); give a path relative to it, e.g. {kind}:my-model")
    resolved = f"{kind}:{p}"
    if len(resolved) > 1024:
        raise ApiError(422, "invalid_model", "ref: the resolved path is longer than 1024 characters")
    return resolved
