"""CLI commands that talk to a bitplan server: ``serve``, ``submit``, ``status``, ``policy``,
``cancel``, ``solve`` (a new budget on a stored table) and ``data upload``/``data show``.

They use the SDK (``service.client``), so they need no torch locally except ``serve``. Bad
arguments and 4xx answers print one line and exit 2; an unreachable server exits 1.
``parser`` adds the arguments, ``request`` turns them into a job request, ``commands`` runs them."""
from __future__ import annotations

from service.cli_remote.commands import EXIT_UNAVAILABLE, EXIT_USAGE, MODEL_REFS, follow, run
from service.cli_remote.parser import GROUPS_NOT_GIVEN, REMOTE_DATA_HELP, add_commands
from service.cli_remote.request import BUILTIN_DATA, SERVER_PREFIXES, budgets

# the names service.demo and the tests import
_follow, _budgets = follow, budgets

__all__ = ["BUILTIN_DATA", "EXIT_UNAVAILABLE", "EXIT_USAGE", "GROUPS_NOT_GIVEN", "MODEL_REFS", "REMOTE_DATA_HELP",
           "SERVER_PREFIXES", "add_commands", "run"]
