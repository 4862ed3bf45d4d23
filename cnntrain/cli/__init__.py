"""The `cnntrain` command: a click group of verbs. Flags become plain calls; no maths here.

group.py holds the group, its error handling and the options several verbs share; the verbs
live by what they work on: training.py (fit, download, info, gradcheck, runinfo), models.py
(eval, predict, export, serve: using saved networks) and figures.py (summarize, plot).

Heavy modules (numpy and everything built on it) are imported inside the commands, so
`cnntrain --help` answers at once.

Exit codes: 0 success, 2 usage or config error, 1 runtime failure, 130 / 143 / 129 stopped by
SIGINT / SIGTERM / SIGHUP (the shell's 128 + signal number).

Console output is best effort (cnntrain.console): a closed or full stdout never fails a command.
A line saying a file was written goes to stderr when that file is stdout (-o /dev/stdout).
"""

from cnntrain.cli import figures, models, training  # noqa: F401  (each registers its verbs)
from cnntrain.cli.group import cli, main

__all__ = ["cli", "main"]
