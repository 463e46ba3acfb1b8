"""The ``emq`` command line: builds the parser from ``COMMANDS`` and dispatches.

Each subcommand is one module of ``emq.commands`` (``register`` its options, ``run`` it),
listed in ``COMMANDS``.

User mistakes (bad arguments, missing, malformed or mismatched files, a folder another
process is writing) print one line ``emq: error: ...`` and exit 2, with nothing written:
options are range-checked by the parser (``benchmark.options``), files against their
schemas (``benchmark.schemas``, ``emq.schemas``) before any work. Set ``EMQ_DEBUG=1`` to see
the traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys

from benchmark.options import text
from emq.commands import (
    ablate,
    allocate,
    baselines,
    bench,
    evolve,
    export,
    export_model,
    score,
    train,
    transfer,
)

# OSError: a path the user gave that cannot be read or written (a directory, permissions,
# a name too long, a full disk). RecursionError: a safety net behind the depth limits.
USER_ERRORS = (ValueError, KeyError, OSError, sqlite3.DatabaseError, RecursionError)
MAX_MESSAGE = 2000

# The subcommands, in the order ``emq --help`` lists them.
COMMANDS = (train, bench, evolve, ablate, export, export_model, score, transfer, baselines,
            allocate)  # fmt: skip


class UsageError(Exception):
    """A command line the parser refuses (unknown option, bad value)."""


class Parser(argparse.ArgumentParser):
    """``argparse`` whose refusals are one ``emq: error:`` line (not usage + message)."""

    def error(self, message: str):  # type: ignore[override]
        message = re.sub(r"^argument ([^:]+): ", r"\1 ", message)
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emq`` command: one subcommand per ``emq.commands`` module."""
    p = Parser(
        prog="emq",
        description="Evolve training-free proxies for mixed-precision quantization.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub).set_defaults(emq_command=command)
    _refuse_empty_text(p)
    return p


def _refuse_empty_text(parser: argparse.ArgumentParser) -> None:
    """Every free-text option of every subcommand (paths, names, lists) refuses an empty
    value (``--checkpoint ""``, ``--models ,``): it would read as not given and silently
    fall back to the default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _refuse_empty_text(sub)
        elif (
            isinstance(action, (argparse._StoreAction, argparse._AppendAction))
            and action.type is None
            and action.choices is None
        ):
            action.type = text


def _one_line(exc: BaseException) -> str:
    """The message of a user error, on one line, naming the file of an OSError."""
    if isinstance(exc, KeyError) and exc.args:
        msg = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.strerror:
        name = str(exc.filename or "")
        name = name if len(name) <= 120 else name[:117] + "..."
        msg = f"{exc.strerror}: {name}" if name else exc.strerror
    elif isinstance(exc, RecursionError):
        msg = "the input is nested too deeply"
    else:
        msg = str(exc) or type(exc).__name__
    msg = " ".join(msg.split())
    return msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "..."


def _stdout_gone() -> int:
    """stdout was closed by its reader (``emq ... | head``): stop quietly, as the Python
    docs recommend (``signal`` docs, "Note on SIGPIPE"): point stdout at devnull so the
    interpreter's final flush does not fail again. Exit 141, as a shell reports a process
    that SIGPIPE ended (128 + 13)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emq`` console script; returns the exit status.

    0 on success; 2 and one ``emq: error: ...`` line on stderr for any bad input (the
    command line, a file, a locked folder); 130 on Ctrl-C; 141 (quietly) when stdout's
    reader went away. ``--help`` exits 0 through ``SystemExit``.
    """
    try:
        args = build_parser().parse_args(argv)
        args.emq_command.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("emq: interrupted; finished results are saved, rerun the command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    except BrokenPipeError:
        return _stdout_gone()
    except UsageError as exc:
        print(f"emq: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        if os.environ.get("EMQ_DEBUG"):
            raise
        print(f"emq: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
