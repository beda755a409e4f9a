"""A child process that dies with its parent: sweep workers (``lthfast.sweep.workers``) must not
go on training queued points, adopted by init, after ``kill -9`` of the sweep that started them.

Two mechanisms, because neither covers every case alone: on Linux the kernel sends the child a
signal when its parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon thread polls
the parent's pid once a second (the fallback where prctl is missing, e.g. macOS). The signal is
SIGTERM, which a worker turns into a clean stop (its stage's lock released, checkpoints kept);
a worker that has not left ``STOP_S`` seconds later is killed.

    python -c "import lthfast.sweep.lifeline as l, os; l.die_with_parent(os.getppid())"
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 1.0
STOP_S = 60.0  # how long a stopped worker may take to leave its stage cleanly


def _prctl_deathsig(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _orphaned(parent: int) -> bool:
    return os.getppid() != parent


def _stop() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_S)
    os._exit(1)  # still here: the clean stop hangs; nobody is left to report to


def _watch(parent: int) -> None:
    while not _orphaned(parent):
        time.sleep(POLL_S)
    _stop()


def die_with_parent(parent: int) -> None:
    """Call first thing in a child; ``parent``: the pid of the process that started it."""
    _prctl_deathsig(signal.SIGTERM)
    threading.Thread(target=_watch, args=(parent,), name="lifeline", daemon=True).start()
    if _orphaned(parent):  # it died before the signal was armed
        _stop()
