"""A sweep's records: one grid point run through the API into its record, and the sweep summary
(its path, its writing, the failed-runs error), written once for every way a sweep runs: in
this process (``lthfast.sweep.runner``), in worker processes (``lthfast.sweep.workers``) and as
submitit jobs (``lthfast.sweep.launch``). It imports none of them, so none of them imports
another to share it.

    python -c "from lthfast.sweep.records import summary_path; help(summary_path)"
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import UserError


def run_point(command: str, point: dict[str, Any], rt) -> dict:
    """One grid point through the API: its record (flags, status, artifact or error, and its
    wall time in seconds). A user error is this point's result, not the sweep's end."""
    from ..api import COMMANDS, request_from, with_flags

    start = time.monotonic()
    record: dict[str, Any] = {"flags": point}
    try:
        request, flags = request_from(command, point, rt)
        artifact = COMMANDS[command](request, with_flags(rt, flags))
        record |= {"status": "ok", "artifact": str(artifact)}
    except UserError as exc:
        record |= {"status": "error", "error": str(exc)}
    return record | {"seconds": round(time.monotonic() - start, 3)}


def summary_path(spec, out: str | Path, points: list[dict]) -> Path:
    """``<out>/sweep_<hash>.json``: one summary per command and grid, whatever the launcher."""
    from ..files import config_hash

    return Path(out) / f"sweep_{config_hash({'command': spec.command, 'runs': points})}.json"


def write_summary(path: Path, spec, runs: list[dict], **extra: Any) -> Path:
    """The summary: the file, command, scale, every run's record, and what the launcher adds."""
    from ..files import atomic_write_json

    return atomic_write_json(path, {"file": str(spec.path), "command": spec.command,
                                    "scale": spec.scale, **extra, "runs": runs})


def check_failed(runs: list[dict], summary: Path) -> None:
    """The sweep's end: a UserError naming how many runs failed, if any did."""
    failed = sum(r["status"] == "error" for r in runs)
    if failed:
        raise UserError(f"{failed} of {len(runs)} runs failed (see {summary})")
