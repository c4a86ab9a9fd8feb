"""``bitplan`` command line. ``bitplan search`` runs the engine locally (no server); ``evolve``,
``export`` and ``import-measurement`` are local tools; ``serve``, ``submit``, ``status``,
``policy``, ``cancel`` and ``data`` work with a server (service/cli_remote/).

Bad arguments print one line and exit with code 2; heavy imports (torch) happen only after the
arguments have been validated, so ``--help`` and usage errors are instant. Modules: ``args``
(argument types, shared flags, the one-line error rule), ``parser`` (the commands and their
flags), ``local`` (``search``: flags → request → spec → one validation → pipeline), ``tools``
(the other local commands)."""
from __future__ import annotations

from service.cli.args import EXIT_USAGE, add_data_args, data_kwargs, fail, validation_line  # noqa: F401
from service.cli.local import request_from_args, spec_from_args  # noqa: F401
from service.cli.parser import EPILOG, build_parser  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "search":
        from service.cli.local import cmd_search
        return cmd_search(args)
    from service.cli import tools
    local = {"evolve": tools.cmd_evolve, "export": tools.cmd_export, "import-measurement": tools.cmd_import_measurement}
    if args.command in local:
        return local[args.command](args)
    from service.cli_remote import run
    return run(args)
