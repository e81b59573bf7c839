"""The client commands of the ``jobgate`` CLI, built on :mod:`jobgate.client`.

``submit``, ``adopt``, ``watch``, ``jobs``, ``get``, ``result``, ``cancel``, ``rerun``,
``continue`` and ``delete``. ``gateway/cli.py`` registers them beside ``serve``, ``sandbox``,
``demo`` and ``keys`` with :func:`add_client_commands`.

- :mod:`jobgate.cli.parsing`: the arguments and the exit codes;
- :mod:`jobgate.cli.render`: how jobs look, plain or rich;
- :mod:`jobgate.cli.watch`: following a job's event stream live;
- :mod:`jobgate.cli.commands`: the commands themselves.
"""

from __future__ import annotations

import argparse

from jobgate.cli.parsing import COMMAND_NAMES, EXIT_CODES, Command, add_parsers


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the ``jobgate`` parser's subcommands."""
    add_parsers(sub, {name: _lazy(name) for name in COMMAND_NAMES})


def _lazy(name: str) -> Command:
    """The command, imported when it runs: ``jobgate serve`` need not load the client or rich."""

    def run(args: argparse.Namespace) -> int:
        from jobgate.cli.commands import COMMANDS

        return COMMANDS[name](args)

    return run


__all__ = ["EXIT_CODES", "add_client_commands"]
