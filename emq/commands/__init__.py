"""The ``emq`` subcommands, one module each (git-style).

Every module has ``register(subparsers) -> parser`` (adds its subcommand and options) and
``run(args)`` (calls the library and prints); ``emq.cli`` builds the parser from
``COMMANDS`` and dispatches. Adding a subcommand is one module here and one line below.
Options and helpers several commands share are in ``emq.commands.common``.
"""

from __future__ import annotations

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

# In the order ``emq --help`` lists them.
COMMANDS = (train, bench, evolve, ablate, export, export_model, score, transfer, baselines,
            allocate)  # fmt: skip

__all__ = ["COMMANDS"]
