"""The one seam for fault injection and tracing, read from the environment in this one place.

Tests of resumption need to kill a process at an exact point and to see which stages a rerun
trained again. Instead of replacing names that modules import (which breaks the harness, not the
code, on a harmless refactor), the stage runner and the file writer call ``point`` and ``trace``
at documented places; both do nothing unless the environment asks for them:

- ``LTHFAST_TRACE=FILE``: append one JSON line per event: ``{"event": "train", "stage": ...,
  "first_step": ...}`` when a stage starts training (after any checkpoint is loaded) and
  ``{"event": "done", "stage": ...}`` when a stage is marked done.
- ``LTHFAST_KILL=JSON``: SIGKILL this process (no handler, no ``finally``, no flush: the same as
  ``kill -9`` from outside) at the first matching point:
  ``{"stage": REGEX, "step": N}`` after training step N of a matching stage;
  ``{"mark_done": REGEX}`` just before a matching stage's ``done.json`` is written;
  ``{"replace": REGEX, "nth": N}`` just before the N-th (1-based) atomic replace onto a matching
  path.

- ``LTHFAST_PAUSE=JSON``: ``{"stage": REGEX, "step": N, "file": PATH, "seconds": S}``: after
  training step N of a matching stage, unless PATH exists, create it (holding this pid) and
  sleep S seconds (default 120): a test then pre-empts, requeues or signals a job that is
  certainly mid-stage. The rerun finds PATH and does not pause again.

Stage names are ``<kind>/<path inside the run>``: ``pretrain/replicate_0``,
``imp/replicate_1/level_2``, ``el2n/replicate_0``.

    LTHFAST_KILL='{"stage": "imp/replicate_0/level_1", "step": 30}' lthfast imp --dataset digits ...
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

_replaces = 0


def _kill_spec() -> dict:
    return json.loads(os.environ.get("LTHFAST_KILL") or "null") or {}


def enabled() -> bool:
    """True when a test asked for kills or traces; the stage runner adds its step probe only
    then."""
    return bool(os.environ.get("LTHFAST_KILL") or os.environ.get("LTHFAST_TRACE")
                or os.environ.get("LTHFAST_PAUSE"))


def trace(**record: Any) -> None:
    path = os.environ.get("LTHFAST_TRACE")
    if path:
        record["pid"] = os.getpid()
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _die(where: str) -> None:
    trace(event="kill", at=where)
    os.kill(os.getpid(), signal.SIGKILL)


def point(kind: str, **where: Any) -> None:
    """A place where a test may kill the process: ``step`` (stage, step), ``mark_done`` (stage),
    ``replace`` (path); or pause there (``LTHFAST_PAUSE``)."""
    if kind == "step" and os.environ.get("LTHFAST_PAUSE"):
        _pause(where["stage"], where["step"])
    if not os.environ.get("LTHFAST_KILL"):
        return
    spec = _kill_spec()
    if kind == "step" and "stage" in spec and spec.get("step") == where["step"] \
            and re.fullmatch(spec["stage"], where["stage"]):
        _die(f"{where['stage']}:{where['step']}")
    elif kind == "mark_done" and "mark_done" in spec and re.fullmatch(spec["mark_done"],
                                                                      where["stage"]):
        _die(f"mark_done {where['stage']}")
    elif kind == "replace" and "replace" in spec and re.search(spec["replace"], where["path"]):
        global _replaces
        _replaces += 1
        if _replaces == spec.get("nth", 1):
            _die(f"replace {where['path']}")


def _pause(stage: str, step: int) -> None:
    import time

    spec = json.loads(os.environ["LTHFAST_PAUSE"])
    if spec.get("step") != step or not re.fullmatch(spec["stage"], stage):
        return
    try:  # O_EXCL: only the first process to get here pauses
        fd = os.open(spec["file"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    trace(event="pause", at=f"{stage}:{step}")
    time.sleep(float(spec.get("seconds", 120)))
