"""Ctrl-C on the command line while the package is still being imported (torch takes
seconds): one line and exit 130, as during a command's work, not a traceback through
Python's import machinery.

Only for `python -m mistral_lab ...` (Python sets argv[0] to "-m" while it locates the
module): a notebook's kernel or a script keeps its KeyboardInterrupt. __main__.main()
gives Ctrl-C back to Python before the work, so a stopped training run still saves.
"""
from __future__ import annotations

import signal
import sys


def _interrupted(signum, frame):
    print("interrupted", file=sys.stderr)
    raise SystemExit(130)


def quiet_while_importing() -> None:
    """Called first thing by mistral_lab/__init__.py."""
    if sys.argv[:1] == ["-m"]:
        signal.signal(signal.SIGINT, _interrupted)


def restore() -> None:
    """Called by __main__.main() before the work: Ctrl-C raises KeyboardInterrupt again."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
