"""Analyses of the paper that hang off a pre-training point or an IMP level as run-store branches.

Each analysis is one module here with a frozen config and a ``run`` function, registered by name
in ``ANALYSES``; its stages live under the parent's stage directory
(``pretrain_<hash>/replicate_<r>/<name>_<hash>/``), so a parent's analyses sit next to it and a
finished branch is skipped on rerun like any stage.

    python -c "from lthfast.experiments.analyses import ANALYSES; print(list(ANALYSES))"
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Optional

from ...registry import Registry
from ...runs import Run, Stage

ANALYSES = Registry("analysis")  # name -> module-level run function


def finished(run: Run, level: Optional[int], branch: str) -> list[Stage]:
    """Every replicate's finished ``branch`` stage at ``level`` (None: the pre-training point),
    in replicate order (2 before 10). Summaries are built from these rather than from the
    replicates one command asked for, so a rerun with fewer ``--replicates`` keeps the results
    an earlier, larger run finished, as IMP's ``results.json`` does. The branch name (a hash of
    the analysis's config, or a fixed name for one without settings) and the parent run fix
    everything but the replicate, so every stage found belongs to the same analysis."""
    reps = sorted(int(m.group(1)) for p in run.path.glob("replicate_*")
                  if (m := re.fullmatch(r"replicate_(\d+)", p.name)))
    return [s for s in (run.stage(r, level, branch) for r in reps) if s.is_done()]


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
