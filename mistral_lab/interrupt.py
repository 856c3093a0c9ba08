"""Ctrl-C on the command line while the package is still being imported (torch takes
seconds): one line and exit 130, as during a command's work, not a traceback through
Python's import machinery.

Only for `python -m mistral_lab ...` (Python sets argv[0] to "-m" while it locates the
module): a notebook's kernel or a script keeps its KeyboardInterrupt. __main__.main()
gives Ctrl-C back to Python before the work, so a stopped training run still saves.
"""
from __future__ import annotations

import os
import signal
import sys


def _interrupted(signum, frame):
    """Exit at once, not by raising: the signal can land inside a C extension's
    initialization (numpy's, while torch imports it), which turns the exception into an
    ImportError that torch survives, and the next import of numpy then fails with a
    traceback. Nothing is lost: importing writes no file of the user's (CPython writes its
    .pyc caches atomically)."""
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def quiet_while_importing() -> None:
    """Called first thing by mistral_lab/__init__.py."""
    if sys.argv[:1] == ["-m"]:
        signal.signal(signal.SIGINT, _interrupted)


def restore() -> None:
    """Called by __main__.main() before the work: Ctrl-C raises KeyboardInterrupt again."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
