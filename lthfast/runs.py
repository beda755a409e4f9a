"""The run store: the only module that knows where runs, stages and their files live on disk.

A run is one experiment config of one kind; its directory is ``<out>/<kind>_<hash>/`` where the
hash is of the config's canonical JSON (fields at their default left out, so adding a field keeps
old hashes), and it holds ``config.json`` and ``env.json``. Inside, one stage per unit of work:

    <kind>_<hash>/replicate_<r>/                         pre-training, score ensemble members
    <kind>_<hash>/replicate_<r>/level_<k>/               IMP levels
    <kind>_<hash>/replicate_<r>/[level_<k>/]<branch>/    analyses hung under a stage (as open_lth)
    <kind>_<hash>/scratch/<stages>/checkpoint.pt         packing groups: checkpoints only
    <kind>_<hash>/scratch/<stages>/stages.json           ... and the stages each one trains

A stage is finished exactly when its ``done.json`` (a ``StageRecord``) exists; it is written
last, after the stage's weights and metrics. Replicates and levels are not part of the hash, so
asking for more of either later trains only what is missing.

    python -c "from lthfast.runs import RunStore; \\
               print(RunStore('runs').run('pretrain', {'a': 1}).path)"
    # -> runs/pretrain_<hash>
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import re
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from . import faults
from .errors import UserError
from .files import (atomic_write_json, canonical_json, config_hash, environment, locked,
                    read_json)

# Run kinds: what each ``<kind>_<hash>`` directory holds. New analyses add theirs here; every
# registered score is a kind too (``run_kinds``), so a new score needs no line here.
KINDS = ("pretrain", "imp", "el2n", "forgetting", "lmc", "warmup")

# The file names of the layout: every other module asks a ``Run`` or ``Stage`` for its paths.
DONE = "done.json"  # a finished stage's record (StageRecord), or a finished run's
CONFIG = "config.json"
RESULTS = "results.json"  # a run's results over every finished stage (imp, warmup)
SCORES = "scores.npy"  # a score run's per-example scores
# An analysis's summary beside its parent run: ``<analysis>[_<suffix>].json`` (``lmc_<hash>``,
# ``grads_<hash>``, ``errors``, ``errors_level_3``)
_SUMMARY = re.compile(r"([a-z0-9]+)(_[a-z0-9_]+)?\.json")


_REGISTERED: list[str] = []  # kinds of registries that make runs (every score: ``SCORES``)


def register_kind(name: str) -> None:
    """A run kind from a registry (the score registry calls it for each score it registers):
    the run store learns kinds without importing what makes them (no import cycle)."""
    if name not in KINDS and name not in _REGISTERED:
        _REGISTERED.append(name)


def run_kinds() -> tuple[str, ...]:
    """``KINDS`` and every kind registered by ``register_kind`` (every registered score)."""
    return KINDS + tuple(_REGISTERED)


@functools.lru_cache(maxsize=None)
def _float_fields(cls: type) -> frozenset[str]:
    """Fields of a dataclass typed float or Optional[float]."""
    hints = typing.get_type_hints(cls)
    return frozenset(name for name, hint in hints.items()
                     if hint is float or hint == Optional[float])


def to_dict(obj: Any) -> Any:
    """A config (dataclass, possibly nested) as JSON-able data, fields at their default dropped:
    adding a field with a default keeps every old hash. Integers in float fields become floats
    (``lr=1`` from Python is ``lr=1.0`` from the CLI: one run, one hash)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        floats = _float_fields(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            if f.name in floats and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            out[f.name] = to_dict(value)
        return out
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def hash_of(cfg: Any) -> str:
    return config_hash(to_dict(cfg))


@dataclass(frozen=True)
class StageRecord:
    """What a finished stage reports (its ``done.json``). ``extra`` holds an analysis's own
    scalar results; arrays go to ``.npy`` files beside it."""

    replicate: int
    start: int  # the stage trained iterations [start, end)
    end: int
    test_acc: Optional[float]
    test_loss: Optional[float]
    level: Optional[int] = None
    branch: Optional[str] = None
    weights_remaining: float = 1.0
    diverged: Optional[dict] = None  # {"step", "last_finite_loss"} of the first non-finite loss
    loader: str = "device"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "StageRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not {"replicate", "start", "end"} <= set(data):
            raise UserError(f"{path} is not a stage record; delete it to redo that stage")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Stage:
    """One replicate's unit of work in a run: a directory with weights, metrics and done.json."""

    run: "Run"
    replicate: int
    level: Optional[int] = None
    branch: Optional[str] = None

    @property
    def path(self) -> Path:
        path = self.run.path / f"replicate_{self.replicate}"
        if self.level is not None:
            path = path / f"level_{self.level}"
        return path / self.branch if self.branch else path

    @property
    def name(self) -> str:
        """``<kind>/<path inside the run>``: how traces, faults and progress name a stage."""
        return "/".join((self.run.kind, *self.path.relative_to(self.run.path).parts))

    def file(self, name: str) -> Path:
        return self.path / name

    def array(self, name: str) -> Path:
        """A per-example array the stage saved (``loss_barrier``, ``errors``, ``grad_norms``)."""
        return self.path / f"{name}.npy"

    def load(self, name: str):
        """A per-example array the finished stage saved. One that cannot be read (truncated,
        missing) is the one-line ``UserError`` naming it and how to remake it: the stage is
        marked done, so it must be unmarked for a rerun to measure it again."""
        import numpy as np

        path = self.array(name)
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            why = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc}"
            raise UserError(f"{path} is {why}; delete {self.done_file} and rerun the command "
                            f"to measure {self.name} again") from None

    @property
    def done_file(self) -> Path:
        return self.path / DONE

    def is_done(self) -> bool:
        return self.done_file.exists()

    def mark_done(self, record: StageRecord) -> None:
        faults.point("mark_done", stage=self.name)
        atomic_write_json(self.done_file, record.to_json())
        faults.trace(event="done", stage=self.name)

    def record(self) -> StageRecord:
        return StageRecord.from_json(read_json(self.done_file), self.done_file)


_STAGE_DIR = re.compile(r"(replicate|level)_(\d+)")


class Run:
    """One run directory: its kind, config, stages, scratch space and run-level artifacts."""

    def __init__(self, kind: str, config: dict, path: Path):
        self.kind, self.config, self.path = kind, config, path

    @property
    def name(self) -> str:
        return self.path.name

    def create(self) -> "Run":
        """Write config.json and env.json (once); refuse a directory that holds another config."""
        cfg_path = self.path / CONFIG
        if cfg_path.exists():
            if read_json(cfg_path) != json.loads(canonical_json(self.config)):
                raise UserError(f"{self.path} holds a different config; refusing to mix runs")
        else:
            atomic_write_json(cfg_path, self.config)
            atomic_write_json(self.path / "env.json", environment())
        return self

    def exists(self) -> bool:
        return (self.path / CONFIG).exists()

    @contextlib.contextmanager
    def lock(self) -> Iterator["Run"]:
        with locked(self.path):
            yield self

    def replicates(self) -> list[int]:
        """The replicates that have a stage directory, in numeric order (2 before 10)."""
        return sorted(int(m.group(2)) for p in self.path.glob("replicate_*")
                      if (m := _STAGE_DIR.fullmatch(p.name)) and m.group(1) == "replicate")

    def stage(self, replicate: int, level: Optional[int] = None,
              branch: Optional[str] = None) -> Stage:
        return Stage(self, replicate, level, branch)

    def scratch(self, stages: list[Stage]) -> Path:
        """Where a packed group of stages keeps its periodic checkpoint (nothing else). A group
        that spans runs (``run_imps``) is named by a hash of its stages' paths: its checkpoint
        must never be taken for that of another group of the same replicate numbers."""
        first = stages[0]
        if any(s.run.path != self.path for s in stages):
            names = "\n".join(str(s.path.relative_to(self.path.parent)) for s in stages)
            # the same for any spelling of --out
            digest = hashlib.sha256(names.encode()).hexdigest()
            return self.path / "scratch" / f"group_{digest[:16]}"
        parts = ([f"level_{first.level}"] if first.level is not None else []) + (
            [first.branch.replace("/", "_")] if first.branch else []) + [
            "group_" + "_".join(str(s.replicate) for s in stages)]
        return self.path / "scratch" / "_".join(parts)

    def open_scratch(self, stages: list[Stage]) -> Path:
        """The group's scratch directory, made, with the list of its stages (paths relative to
        the store), by which a later attempt that packs them otherwise can tell it is spent."""
        path = self.scratch(stages)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / "stages.json",
                          [str(s.path.relative_to(self.path.parent)) for s in stages])
        return path

    def file(self, name: str) -> Path:
        """A run-level artifact: ``results.json``, ``scores.npy``, ..."""
        return self.path / name

    @property
    def results_file(self) -> Path:
        """Written when every asked-for stage finished (imp, warmup): the run is complete."""
        return self.path / RESULTS

    @property
    def scores_file(self) -> Path:
        return self.path / SCORES

    def summary(self, branch: str) -> Path:
        """The summary of an analysis branch (``lmc_<hash>``, ``errors_level_3``) of this run."""
        return self.path / f"{branch}.json"

    def summaries(self, analysis: str) -> list[Path]:
        """Every summary ``analysis`` wrote beside this run (``lmc`` -> ``lmc_<hash>.json``;
        ``errors`` -> ``errors.json``, ``errors_level_<k>.json``), sorted by name."""
        return sorted(p for p in self.path.glob(f"{analysis}*.json")
                      if (m := _SUMMARY.fullmatch(p.name)) and m.group(1) == analysis)

    def is_done(self) -> bool:
        return (self.path / DONE).exists()

    def mark_done(self, info: dict) -> None:
        faults.point("mark_done", stage=self.kind)
        atomic_write_json(self.path / DONE, info)
        faults.trace(event="done", stage=self.kind)

    def records(self, damaged: Optional[list] = None) -> list[StageRecord]:
        """Every finished stage (not branches), ordered by replicate and level. A record that
        cannot be read raises the one-line ``UserError``; given a ``damaged`` list, its path and
        message go there instead and the other records are still returned."""
        out = []
        for path in self.path.glob(f"replicate_*/**/{DONE}"):
            parts = path.parent.relative_to(self.path).parts
            if all(_STAGE_DIR.fullmatch(p) for p in parts):
                try:
                    out.append(StageRecord.from_json(read_json(path), path))
                except UserError as exc:
                    if damaged is None:
                        raise
                    damaged.append((path, str(exc)))
        return sorted(out, key=lambda r: (r.replicate, -1 if r.level is None else r.level))


class RunStore:
    """All runs under one ``--out`` folder."""

    def __init__(self, out: str | Path):
        self.out = Path(out)

    def run(self, kind: str, cfg: Any) -> Run:
        if kind not in KINDS and kind not in run_kinds():
            raise ValueError(f"unknown run kind {kind!r} (known: {', '.join(run_kinds())})")
        config = to_dict(cfg)
        return Run(kind, config, self.out / f"{kind}_{config_hash(config)}")

    def clear_spent_scratch(self) -> None:
        """Remove the scratch of every packing group, in any run, whose stages are all done.
        A group's own scratch goes when it finishes; this also clears that of an attempt killed
        mid-way whose stages were later trained in other groups (a sweep packed differently, or
        not at all), wherever its stages' runs are. No lock is needed: a group whose stages are
        all done is trained by no one (a stage trains only under its run's lock, until done)."""
        for group in sorted(self.out.glob("*/scratch/*/")):
            try:
                stages = read_json(group / "stages.json")
            except UserError:  # written before manifests existed, or being written: keep
                continue
            if isinstance(stages, list) and all(
                    (self.out / str(s) / DONE).exists() for s in stages):
                shutil.rmtree(group, ignore_errors=True)
                with contextlib.suppress(OSError):
                    group.parent.rmdir()

    def runs(self, kind: str, damaged: Optional[list] = None) -> Iterator[Run]:
        """Every run of ``kind`` with a readable config (a run being created is skipped; one
        whose config cannot be read goes, as (path, message), to ``damaged`` when given)."""
        for path in sorted(self.out.glob(f"{kind}_*")):
            if re.fullmatch(rf"{kind}_[0-9a-f]{{12}}", path.name) and (path / CONFIG).exists():
                try:
                    config = read_json(path / CONFIG)
                except UserError as exc:
                    if damaged is not None:
                        damaged.append((path / CONFIG, str(exc)))
                    continue
                yield Run(kind, config, path)
