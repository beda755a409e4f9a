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

from ...registry import Registry

ANALYSES = Registry("analysis")  # name -> module-level run function

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
