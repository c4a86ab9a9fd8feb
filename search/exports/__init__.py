"""Exporters: a bitplan.policy/v1 policy → the config format of a quantizer people already use.
One module per target, registered by name; each validates what its target can express and
refuses the rest with a message (ExportError), never a silently different policy."""
from __future__ import annotations

from search.exports.base import EXPORTERS, ExportError, Exported, export, get_exporter
from search.exports import compressed_tensors, gptqmodel, llamacpp, mlx, modelopt, torchao  # noqa: F401  (register)

__all__ = ["EXPORTERS", "ExportError", "Exported", "export", "get_exporter"]
