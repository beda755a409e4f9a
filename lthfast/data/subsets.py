"""Subsets of the training set (index arrays, the unit the paper varies) and label noise.

Rules live in a registry: ``all``, ``random`` (class-balanced by default, as in the paper),
``easy`` / ``hard`` (the M easiest / hardest by a score file, e.g. EL2N: the lowest scores, or
the highest for a score whose high end is easy, such as AUM) and ``ccs`` (coverage-centric
selection, Zheng et al. 2023, ICLR: see ``ccs_rule``); the rules that rank by scores are listed
in ``SCORED``. A subset is an
int64 ``.npy`` of train indices under ``<dataset>/subsets/`` whose name says what made it, so the
same request always maps to the same file. Label noise follows appendix A: pick a fraction of the
train set uniformly at random, draw a new label uniformly from all classes (possibly the same one),
once; the noisy labels are saved beside the subsets and reused by every run that names them.

    lthfast subset random --dataset digits --size 200 --seed 0
    # -> datasets/digits/subsets/random_m200_<hash>.npy
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError
from ..registry import Registry
from ..files import atomic_save_npy, config_hash, file_sha256
from .arrays import DatasetArrays
from .loader import mix_seed


@dataclass(frozen=True)
class SubsetSpec:
    """What a subset is made of. ``file`` names a ready index array (any kind then is ignored)."""

    kind: str
    size: Optional[int] = None
    seed: int = 0
    scores: Optional[str] = None  # path of a float .npy, one score per train example
    offset: int = 0
    # None: the rule's default (random: True, easy/hard: False)
    class_balanced: Optional[bool] = None
    file: Optional[str] = None  # a subset .npy given by the user
    shared: bool = False  # random: one subset for every replicate (default: drawn per replicate)
    rank_by: Optional[str] = None  # what the scores are (el2n, forgetting, ...), for reports
    easy_high: bool = False  # high scores are the easy ones (AUM); default: low ones
    strata: int = 50  # ccs: score bins (Zheng et al.'s k = 50)

    def for_replicate(self, replicate: int) -> "SubsetSpec":
        """The subset replicate r trains on: random subsets are drawn afresh per replicate (as the
        authors' code does, so the spread over replicates includes subset sampling), unless
        ``shared``; score-ranked subsets are the same for all."""
        if self.kind == "random" and not self.shared and self.file is None:
            return dataclasses.replace(self, seed=mix_seed(self.seed, replicate))
        return self

    @property
    def balanced(self) -> bool:
        return (self.kind == "random") if self.class_balanced is None else self.class_balanced

    def identity(self) -> dict:
        """What determines the subset's content (files by their content, never their path)."""
        if self.file is not None:
            return {"kind": "file", "file": file_sha256(self.file)[:16]}
        out: dict = {"kind": self.kind}
        if self.kind == "all":
            return out
        out |= {"size": self.size, "offset": self.offset, "class_balanced": self.balanced}
        if self.kind == "random":
            out |= {"seed": self.seed, "shared": self.shared}
        if self.scores is not None:
            out |= {"scores": file_sha256(self.scores)[:16], "rank_by": self.rank_by}
            if self.easy_high:  # only when set: the identities of earlier subsets stay
                out |= {"easy": "high"}
        if self.kind == "ccs":
            out |= {"seed": self.seed, "strata": self.strata}
        return out

    @property
    def name(self) -> str:
        """For people: ``random_m200``, ``easy_m300``, ``file:<name>``."""
        if self.file is not None:
            return f"file:{Path(self.file).name}"
        return self.kind + (f"_m{self.size}" if self.size and self.kind != "all" else "")

    def check(self) -> None:
        """What is wrong without looking at any data: one line, before anything runs."""
        if self.file is not None:
            if self.kind != "all" or self.size is not None:
                raise UserError("--subset-file names the subset; drop --subset and --size")
            return
        SUBSET_RULES.lookup(self.kind)
        if self.kind == "all" and self.size is not None:
            raise UserError("--size does not apply to --subset all (use --subset random)")
        if self.kind != "all" and self.size is None:
            raise UserError(f"--subset {self.kind} needs --size")
        if self.size is not None and self.size < 1:
            raise UserError(f"--size must be >= 1, got {self.size}")
        if self.offset < 0:
            raise UserError("--offset must be >= 0")
        if self.seed < 0:
            raise UserError(f"--subset-seed must be >= 0, got {self.seed}")
        if self.strata < 1:
            raise UserError(f"ccs strata must be >= 1, got {self.strata}")


SubsetRule = Callable[[DatasetArrays, SubsetSpec], np.ndarray]
SUBSET_RULES = Registry("subset kind")  # name -> SubsetRule
register_rule = SUBSET_RULES.register
SCORED: set[str] = set()  # the rules that rank by a score file (they need --scores or a score)


def register_scored_rule(name: str) -> Callable[[SubsetRule], SubsetRule]:
    """Register a rule that ranks by scores: ``imp`` computes the scores it needs."""
    SCORED.add(name)
    return register_rule(name)


def check_size(size: Optional[int], n: int) -> int:
    if size is None:
        raise UserError("--size is required for this subset kind")
    if not 1 <= size <= n:
        raise UserError(f"--size must be between 1 and the train size {n}, got {size}")
    return size


def per_class_quota(counts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``size`` as evenly as possible over classes; leftover units go to random classes."""
    num_classes = len(counts)
    quota = np.full(num_classes, size // num_classes)
    quota[rng.permutation(num_classes)[: size % num_classes]] += 1
    if np.any(quota > counts):
        raise UserError(f"a class-balanced subset of {size} needs {quota.max()} examples per "
                        f"class, but the smallest class has {counts.min()}")
    return quota


def shares(labels: np.ndarray, size: int, offset: int, balanced: bool, num_classes: int,
           seed: int) -> Optional[np.ndarray]:
    """How many examples each class gives (None: not balanced), after checking that a ranking
    of all examples can give them past ``offset``: from the labels alone, so a subset that
    cannot be made is refused before any score is computed to rank it."""
    if not balanced:
        if offset + size > len(labels):
            raise UserError(f"--offset {offset} + --size {size} exceeds the train size "
                            f"{len(labels)}")
        return None
    counts = np.bincount(labels, minlength=num_classes)
    # when the classes cannot all get the same share, which of them get one more is drawn
    # with the subset's seed, so seeds do not favour the same classes
    quota = per_class_quota(counts, size, np.random.default_rng(seed))
    for c in range(num_classes):
        if offset + quota[c] > counts[c]:
            raise UserError(f"class {c} has {counts[c]} examples: too few for --offset "
                            f"{offset} + its share {quota[c]}")
    return quota


def ranked_pick(order: np.ndarray, labels: np.ndarray, size: int, offset: int,
                balanced: bool, num_classes: int, seed: int) -> np.ndarray:
    """Take ``size`` indices from a ranking of all examples (best first), skipping the first
    ``offset`` of it (per class when balanced, in the shares of ``shares``)."""
    quota = shares(labels, size, offset, balanced, num_classes, seed)
    if quota is None:
        return order[offset : offset + size]
    return np.concatenate([order[labels[order] == c][offset : offset + quota[c]]
                           for c in range(num_classes)])


def check_fits(ds: DatasetArrays, spec: SubsetSpec) -> None:
    """Everything ``make_subset`` would refuse about size and offset, without scores."""
    if spec.file is not None or spec.kind == "all":
        return
    size = check_size(spec.size, ds.train_size)
    shares(np.asarray(ds.train_labels), size, spec.offset, spec.balanced, ds.num_classes,
           spec.seed)


@register_rule("all")
def all_rule(ds: DatasetArrays, spec: SubsetSpec) -> np.ndarray:
    return np.arange(ds.train_size)


@register_rule("random")
def random_rule(ds: DatasetArrays, spec: SubsetSpec) -> np.ndarray:
    size = check_size(spec.size, ds.train_size)
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(ds.train_size)
    balanced = True if spec.class_balanced is None else spec.class_balanced
    return ranked_pick(order, np.asarray(ds.train_labels), size, spec.offset, balanced,
                       ds.num_classes, spec.seed)


def load_scores(path: str | Path, n: int) -> np.ndarray:
    scores = load_array(path, "scores")
    if scores.ndim != 1 or len(scores) != n:
        raise UserError(f"scores file {path} has shape {scores.shape}; expected ({n},), "
                        "one score per train example in dataset order")
    if (not (np.issubdtype(scores.dtype, np.integer) or np.issubdtype(scores.dtype, np.floating))
            or not np.all(np.isfinite(scores))):
        raise UserError(f"scores file {path} contains NaN/inf or non-real numbers")
    # float64: ranking negates the scores, which wraps around for unsigned counts (uint8
    # forgetting counts would make "hard" pick the easiest) and overflows at a signed minimum
    return scores.astype(np.float64)


def hardness(ds: DatasetArrays, spec: SubsetSpec) -> np.ndarray:
    """The spec's scores, oriented so that higher is harder (negated where high is easy)."""
    if spec.scores is None:
        raise UserError(f"subset '{spec.kind}' needs --scores FILE")
    scores = load_scores(spec.scores, ds.train_size)
    return -scores if spec.easy_high else scores


def score_rule(hardest_first: bool) -> SubsetRule:
    def rule(ds: DatasetArrays, spec: SubsetSpec) -> np.ndarray:
        size = check_size(spec.size, ds.train_size)
        hard = hardness(ds, spec)
        # stable sort: ties keep dataset order, so the same scores always give the same subset
        order = np.argsort(-hard if hardest_first else hard, kind="stable")
        return ranked_pick(order, np.asarray(ds.train_labels), size, spec.offset,
                           bool(spec.class_balanced), ds.num_classes, spec.seed)
    return rule


register_scored_rule("easy")(score_rule(hardest_first=False))
register_scored_rule("hard")(score_rule(hardest_first=True))


def coverage_centric(hard: np.ndarray, size: int, cutoff: int, strata: int,
                     rng: np.random.Generator) -> np.ndarray:
    """CCS (Zheng et al. 2023, "Coverage-centric coreset selection for high pruning rates",
    Algorithm 1) over positions of ``hard`` (higher: harder): drop the ``cutoff`` hardest, cut
    the score range of the rest into ``strata`` bins of equal width, then fill the budget from
    the bin with the fewest examples up: each bin gives min(its size, budget left / bins left),
    drawn uniformly without replacement, so sparse (hard, rare) regions are covered and dense
    easy ones give only their share."""
    order = np.argsort(-hard, kind="stable")  # hardest first
    kept = np.sort(order[cutoff:])
    if size > len(kept):
        raise UserError(f"ccs: --size {size} exceeds the {len(kept)} examples left after "
                        f"pruning the {cutoff} hardest (--offset)")
    values = hard[kept]
    lo, hi = values.min(), values.max()
    edges = np.linspace(lo, hi, strata + 1)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, strata - 1)
    members = [kept[bins == b] for b in range(strata)]
    members = [m for m in members if len(m)]
    picked, budget = [], size
    for left, b in enumerate(sorted(range(len(members)), key=lambda i: (len(members[i]), i))):
        take = min(len(members[b]), budget // (len(members) - left))
        picked.append(rng.choice(members[b], size=take, replace=False))
        budget -= take
    return np.concatenate(picked)


@register_scored_rule("ccs")
def ccs_rule(ds: DatasetArrays, spec: SubsetSpec) -> np.ndarray:
    """Coverage-centric selection of M examples (``coverage_centric``): ``--offset`` is the
    hard cutoff, the number of hardest examples pruned first (Zheng et al.'s β as a count, β N;
    they raise β with the pruning rate, e.g. 0.1 of CIFAR-10 at 90% pruning); ``strata`` bins
    (their k = 50); the draws within bins from ``--subset-seed``. Class-balanced
    (``--class-balanced``): the same within each class, for its share of M and of the cutoff."""
    size = check_size(spec.size, ds.train_size)
    hard = hardness(ds, spec)
    labels = np.asarray(ds.train_labels)
    rng = np.random.default_rng(spec.seed)
    quota = shares(labels, size, spec.offset, bool(spec.class_balanced), ds.num_classes,
                   spec.seed)
    if quota is None:
        return coverage_centric(hard, size, spec.offset, spec.strata, rng)
    out = []
    for c in range(ds.num_classes):
        where = np.flatnonzero(labels == c)
        if quota[c]:
            out.append(where[coverage_centric(hard[where], int(quota[c]), spec.offset,
                                              spec.strata, rng)])
    return np.concatenate(out)


def make_subset(ds: DatasetArrays, spec: SubsetSpec) -> np.ndarray:
    if spec.file is not None:
        return load_subset(spec.file, ds.train_size)
    if spec.kind not in SUBSET_RULES:
        raise UserError(f"unknown subset kind '{spec.kind}' (known: {', '.join(SUBSET_RULES)})")
    if spec.offset < 0:
        raise UserError("--offset must be >= 0")
    return np.sort(SUBSET_RULES[spec.kind](ds, spec)).astype(np.int64)


def subset_path(ds: DatasetArrays, spec: SubsetSpec) -> Path:
    # named by content, not by path: moved score files still match
    size = spec.size if spec.kind != "all" else ds.train_size
    return ds.path / "subsets" / f"{spec.kind}_m{size}_{config_hash(spec.identity())}.npy"


def write_subset(ds: DatasetArrays, spec: SubsetSpec) -> Path:
    if spec.scores is not None and not Path(spec.scores).exists():
        raise UserError(f"scores file {spec.scores} does not exist")
    indices = make_subset(ds, spec)
    path = subset_path(ds, spec)
    if not path.exists():
        atomic_save_npy(path, indices)
    return path


def load_subset(path: str | Path, train_size: int) -> np.ndarray:
    """Read and validate a subset file: 1-D integers, in range, no duplicates, not empty."""
    indices = load_array(path, "subset")
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or len(indices) == 0:
        raise UserError(f"subset file {path} must be a non-empty 1-D integer array")
    if indices.min() < 0 or indices.max() >= train_size:
        raise UserError(f"subset file {path} has indices outside [0, {train_size})")
    if len(np.unique(indices)) != len(indices):
        raise UserError(f"subset file {path} has duplicate indices")
    return indices.astype(np.int64)


def load_array(path: str | Path, what: str) -> np.ndarray:
    """One .npy array (not an .npz archive, not a pickle), or the one-line error."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {what} file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise UserError(f"{what} file {path} is an .npz archive; give one .npy array")
    return array


def noisy_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    check_noise_fraction(fraction)
    rng = np.random.default_rng(seed)
    labels = np.array(labels, dtype=np.int64)
    chosen = rng.choice(len(labels), size=int(round(fraction * len(labels))), replace=False)
    labels[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return labels


def check_noise_fraction(fraction: float, seed: int = 0) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"--label-noise must be in [0, 1], got {fraction}")
    if seed < 0:
        raise UserError(f"--noise-seed must be >= 0, got {seed}")


def noisy_labels_path(ds: DatasetArrays, fraction: float, seed: int) -> Path:
    """Create (once) and return the saved noisy train labels for (fraction, seed)."""
    check_noise_fraction(fraction)
    path = ds.path / "subsets" / f"labels_noise{fraction:g}_seed{seed}.npy"
    if not path.exists():
        atomic_save_npy(path, noisy_labels(ds.train_labels, fraction, ds.num_classes, seed))
    return path


def train_labels(ds: DatasetArrays, label_noise: float = 0.0, noise_seed: int = 0) -> np.ndarray:
    """The train labels a run sees: the true ones, or the saved noisy copy."""
    if label_noise == 0:
        return np.asarray(ds.train_labels)
    path = noisy_labels_path(ds, label_noise, noise_seed)
    labels = load_subset_like_labels(path, ds.train_size, ds.num_classes)
    return labels


def load_subset_like_labels(path: Path, n: int, num_classes: int) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"corrupt labels file {path}: {exc}") from None
    if labels.shape != (n,) or labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"corrupt labels file {path}; delete it to regenerate")
    return labels.astype(np.int64)
