"""Scores beyond EL2N, forgetting and LMC, one module each; adding a score is adding a file.

Each module here registers one score by name in ``lthfast.experiments.scores.SCORES`` when it is
imported (a ``ScoreKind``: its default steps, which end is easy, and either the hooks it trains
with and each member's per-example values, or a ``compute`` of its own); this package imports
every module in it, so the new name is at once a ``lthfast scores NAME``, an
``imp --rank-by NAME`` and a column of ``lthfast scores compare``. The ensemble runner
(``scores.compute_scores``) trains the K members packed, keyed by config hash, resumably.

- ``grand.py``: GraNd (Paul et al. 2021), per-example gradient norm at step t (default 0).
- ``aum.py``: AUM (Pleiss et al. 2020), mean margin over an example's presentations.
- ``train_loss.py``: mean training loss over the presentations of a run.
- ``pred_var.py``: spread of the assigned-class probability over checkpoints of a run.

    python -c "from lthfast.experiments.scores import SCORES; print(list(SCORES))"
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
