"""Report writers: tables, CSV, JSON and plots of finished results.

Each takes built objects (rows, arrays, paths), never a command line; the commands
(``emq.commands``) and experiment runners call them. Nothing in the engine imports them.
"""
