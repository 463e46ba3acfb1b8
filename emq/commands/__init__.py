"""The ``emq`` subcommands, one module each (git-style).

Every module has ``register(subparsers) -> parser`` (adds its subcommand and options) and
``run(args)`` (calls the library and prints); ``emq.cli.COMMANDS`` lists them and
``emq.cli`` dispatches. Adding a subcommand is one module here and one entry there.
Options and helpers several commands share are in ``emq.commands.common``.
"""
