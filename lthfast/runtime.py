"""The runtime flags: how to run (device, data and runs roots, determinism, compile, loader,
checkpoints), never part of a run's identity. Declared once, on ``Runtime``'s fields
(``experiments.common``); built and checked here for the CLI, the API and every sweep point.

    python -c "from lthfast.runtime import runtime; print(runtime(device='cpu'))"
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .experiments.common import Runtime, check_device, default_device
from .options import Option, check_bounds, coerce, opts


def options() -> list[Option]:
    """The runtime's flags, as the CLI shows them."""
    return opts(Runtime)


def sweep_flags() -> dict[str, Option]:
    """The runtime flags a sweep file may set per point (not root, out, device: the sweep's)."""
    own = {f.name for f in dataclasses.fields(Runtime) if f.metadata.get("sweep")}
    return {o.name: o for o in options() if o.name in own}


def checked(flags: dict[str, Any]) -> dict[str, Any]:
    """Runtime flags checked against their types and bounds, the loader by its registry."""
    from .data.streams import STREAMS

    by_name = {o.name: o for o in options()}
    out = {}
    for name, value in flags.items():
        out[name] = coerce(by_name[name], value)
        check_bounds(by_name[name], out[name])
    if "loader" in out:
        STREAMS.lookup(out["loader"])
    return out


def runtime(progress=None, **flags: Any) -> Runtime:
    """A checked runtime from flags (the CLI's and the API's); ``device`` None: cuda if there
    is one. Example: ``runtime(out="runs", device="cpu")``."""
    flags = checked(flags)
    flags["device"] = flags.get("device") or default_device()
    check_device(flags["device"])
    return Runtime(**flags, progress=progress)


def with_flags(rt: Runtime, flags: dict[str, Any]) -> Runtime:
    """``rt`` with a sweep point's runtime flags, checked as ``runtime`` checks them (then
    ``Runtime.__post_init__`` on the result, e.g. --cuda-graph on a CPU device)."""
    return dataclasses.replace(rt, **checked(flags))
