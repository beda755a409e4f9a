"""The paper's figures, drawn from ``lthfast report`` tables only (never from checkpoints), as
PNG and PDF in one style; each file's metadata names the table it was drawn from.

``lthfast plot NAME`` takes a kind below or the paper's name of a figure (``fig1`` ... ``fig15``;
``lthfast plot --list`` prints the map). A kind draws one figure per comparison the paper makes
(a comparison: runs that share everything but what the paper varies in that figure); a curve is
one configuration (every flag; replicates are averaged, mean ± std), and a legend names, in
words, only the flags that differ between the curves drawn (a flag at its default for the
subset's kind, e.g. random's class balance, is not named), all-data baselines first. A scheme
looks the same in every figure, as the paper's captions draw it (``CONVENTION``: random green
circles, easiest red triangles, hardest pink crosses, all data dashed at t_r = 0 / t*/2 / t*
yellow / orange / blue); one the captions do not name gets a spare look of its own. Subsets
pre-trained for different t_r are a figure each (Fig. 14a, 14b). A paper name draws only the
runs its caption names (``SELECT``: Fig. 12 its forgetting and EL2N subsets, Fig. 2 not them) on
the datasets the paper draws it on (``PAPER``: Fig. 14 CINIC-10 only; at smoke scale their
stand-ins, ``lthfast.sweep.smoke.STAND_INS``) into ``figN_<kind>_<comparison>.png``; a kind
draws every run of every dataset into ``fig_<kind>_...``. Kinds:

- ``best``: accuracy vs weights remaining, the best easy/random/hard subset size, the all-data
  baselines at t_r = 0, t*/2, t* and the dense model (level 0 of all data at t*) (Figs. 2, 4);
- ``sparsity``: the same, one panel per subset size, a colour per scheme (Figs. 11-15);
- ``size``: accuracy vs subset size at levels 8, 10, 12, all-data baselines as lines (Fig. 3);
- ``barrier_hist``: distributions of per-example train loss barriers, a panel per subset size
  (Fig. 5 left, centre);
- ``barriers``: final sparse accuracy vs pre-training accuracy and vs mean train loss barrier,
  a point per replicate, a panel per dataset (Fig. 5 right);
- ``warmup``: final accuracy vs warmup length, a panel per subset size (Fig. 6);
- ``dynamics``: accuracies and gradient coherence vs step (Fig. 7);
- ``grad_norms``: histograms of per-batch gradient norms (Fig. 8);
- ``errors``: per-example error distributions, dense vs sparse projection (Fig. 9);
- ``scores``: EL2N vs LMC scores, a point per example (Fig. 10);
- ``onset``: error barrier vs spawn step, the 2% threshold: the onset of linear mode
  connectivity (§2; Fig. 1 right only illustrates the barrier).

Where the paper is silent, and where we differ (the paper's numbers need its scale):
- Fig. 2's "best size" is the size with the best mean accuracy over the levels every size of
  that scheme reached; it is chosen for random and hardest subsets too, not only the easiest.
- Figs. 3 and 5 right use the paper's levels (8/10/12; 11 for CIFAR-100, 7 for CINIC-10) when
  the runs reached them, else the deepest levels they reached, and say which in the titles.
- Fig. 5 right's barrier is App. A's midpoint barrier when ``lmc`` records it apart from the
  connectivity verdict's (columns ``midpoint_loss_barrier`` or ``loss_barrier_midpoint``), else
  ``loss_barrier``. Fig. 6 averages every replicate's final accuracy, diverged ones included, as
  the authors do (a diverged replicate without a recorded accuracy counts as 0). Fig. 9 draws
  one network (the lowest replicate), as the paper's caption says.

    lthfast report && lthfast plot fig2     # -> runs/report/fig2_best_<comparison>.png/.pdf
"""

from __future__ import annotations

import csv
import io
import math
import re
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

import numpy as np

from .errors import UserError
from .files import atomic_write_bytes
from .registry import Registry
from .results import CONFIG_COLUMNS, key_columns, read_csv
from .sweep.smoke import STAND_INS


class Drawing(NamedTuple):
    stem: str  # fig_<stem>.png / .pdf
    figure: object  # a matplotlib Figure, inspectable before it is saved
    source: str  # the table(s) it was drawn from (file metadata)


FIGURES = Registry("figure")  # kind -> fn(report_dir, select=None) -> list[Drawing]


class Paper(NamedTuple):
    kinds: tuple[str, ...]  # the kinds that draw it
    datasets: tuple[str, ...]  # the full-scale datasets the paper draws it on
    what: str  # what the paper shows


C10, C100, CINIC = "cifar10", "cifar100", "cinic10"
# The paper's figures: a figure draws only its datasets' runs (and their smoke stand-ins')
PAPER = {
    "fig1": Paper(("onset",), (C10,),
                  "Fig. 1 right only illustrates the train loss barrier; 'onset' draws the "
                  "error barrier vs spawn step and the onset of LMC (§2)"),
    "fig2": Paper(("best",), (C10, C100, CINIC),
                  "accuracy vs sparsity: best easy / random / hard size vs all-data baselines"),
    "fig3": Paper(("size",), (C10, C100, CINIC),
                  "accuracy vs subset size at 16.8%, 10.7%, 6.9% weights (levels 8/10/12)"),
    "fig4": Paper(("best",), (C10,),
                  "label noise during pre-training: best easy / random size vs noisy all data "
                  "(a figure per noise level)"),
    "fig5": Paper(("barrier_hist", "barriers"), (C100, CINIC),
                  "per-example train loss barrier histograms; final accuracy vs pre-train "
                  "accuracy and mean barrier"),
    "fig6": Paper(("warmup",), (C10,), "final accuracy vs learning-rate warmup length per "
                                       "subset"),
    "fig7": Paper(("dynamics",), (C100,), "accuracies (a) and gradient coherence (b) vs step, "
                                          "easy vs all"),
    "fig8": Paper(("grad_norms",), (C10,), "histogram of per-batch gradient norms, easy vs "
                                           "random"),
    "fig9": Paper(("errors",), (CINIC,), "per-example error distributions, level 0 vs a sparse "
                                         "level"),
    "fig10": Paper(("scores",), (C100, CINIC), "EL2N vs LMC scores per example"),
    "fig11": Paper(("sparsity",), (C100, CINIC),
                   "pre-training on lowest LMC scores (legend: ranked by lmc)"),
    "fig12": Paper(("sparsity",), (C10,), "pre-training on lowest forgetting vs EL2N scores"),
    "fig13": Paper(("sparsity",), (C10, C100), "Fig. 2 across subset sizes: a panel per size"),
    "fig14": Paper(("sparsity",), (CINIC,),
                   "Fig. 2 across subset sizes: a panel per size (a figure per t_r of the "
                   "subsets: 14a, 14b)"),
    "fig15": Paper(("sparsity",), (C10,), "label noise across subset sizes: a panel per size"),
}


def figure_map() -> str:
    """``lthfast plot --list``: the paper's names, the kinds that draw them, the datasets they
    draw, what they show."""
    lines = [f"{name:6s} -> {', '.join(p.kinds):24s} {', '.join(p.datasets):26s} {p.what}"
             for name, p in PAPER.items()]
    lines.append("table1 -> (no figure) Table 1's hyperparameters are the dataset presets "
                 "(lthfast/config.py)")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 7, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _figure(rows: int = 1, cols: int = 1, width: float = 4.2, height: float = 3.3, **kw):
    """A figure with room for a legend beneath the panels (legends never cover data)."""
    fig, axes = _pyplot().subplots(rows, cols, squeeze=False, layout="constrained",
                                   figsize=(max(width * cols, 5.6), height * rows + 0.6), **kw)
    return fig, axes


MAX_COLUMNS = 4  # panels per row: more would shrink each below reading size


def _panels(n: int, width: float, height: float, **kw):
    """A figure of ``n`` panels in rows of at most ``MAX_COLUMNS``; the panels in order (the
    unused ones of the last row hidden)."""
    cols = max(1, min(MAX_COLUMNS, n))
    fig, axes = _figure(-(-max(1, n) // cols), cols, width=width, height=height, **kw)
    flat = list(np.ravel(axes))
    for ax in flat[max(1, n):]:
        ax.set_visible(False)
    return fig, axes, flat[:max(1, n)]


def _wrap(text: str, chars: int) -> str:
    """``text`` broken into lines of at most ``chars`` characters: at a space where there is
    one, else after a comma (a synthetic dataset's options)."""
    out = []
    for line in text.split("\n"):
        while len(line) > chars:
            cut = line.rfind(" ", 0, chars + 1)
            if cut > 0:
                out.append(line[:cut])
                line = line[cut + 1:]
                continue
            cut = line.rfind(",", 0, chars)
            if cut <= 0:
                break
            out.append(line[:cut + 1])
            line = line[cut + 1:]
        out.append(line)
    return "\n".join(out)


CHAR_WIDTH = 0.6  # of the font size: DejaVu Sans' mean advance, a little generous


def _fit_titles(fig) -> None:
    """Wrap the figure's and every panel's title to the width it has (a long dataset name
    would run off the figure or over the next panel's title)."""
    width_pt = fig.get_figwidth() * 72
    sup = fig._suptitle
    if sup is not None and sup.get_text():
        sup.set_text(_wrap(sup.get_text(), int(width_pt / (sup.get_fontsize() * CHAR_WIDTH))))
    for ax in fig.axes:
        title = ax.title
        if not (ax.get_visible() and title.get_text()):
            continue
        spec = ax.get_subplotspec()
        cols = spec.get_gridspec().ncols if spec is not None else 1
        chars = int(0.95 * width_pt / cols / (title.get_fontsize() * CHAR_WIDTH))
        title.set_text(_wrap(title.get_text(), chars))


SCHEME_ORDER = ("all data", "random", "easiest", "hardest")


def legend_order(label: str) -> tuple:
    """All-data baselines first, then random, easiest, hardest; numbers in numeric order
    (t_r = 2 before t_r = 10, 45 examples before 101)."""
    first = next((i for i, w in enumerate(SCHEME_ORDER) if label.startswith(w)),
                 len(SCHEME_ORDER))
    chunks = re.split(r"(\d+(?:\.\d+)?)", label)
    return (first, [(0, float(c), "") if i % 2 else (1, 0.0, c) for i, c in enumerate(chunks)])


def _legend(fig, axes) -> None:
    """One legend for the figure, under the panels, each label once, in ``legend_order``; the
    titles wrapped to their width."""
    _fit_titles(fig)
    seen = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    if seen:
        seen = dict(sorted(seen.items(), key=lambda kv: legend_order(kv[0])))
        # as many columns as fit the figure's width (a clipped legend names nothing)
        width_pt = fig.get_figwidth() * 72
        longest = max(len(label) for label in seen) * 4.3 + 28  # 7 pt text, marker and gap
        ncols = max(1, min(4, len(seen), int(width_pt // longest)))
        fig.legend(seen.values(), seen.keys(), loc="outside lower center", ncols=ncols,
                   frameon=False)


def spread(what: str, counts: Iterable[int]) -> str:
    """An axis label saying over how many replicates each point is averaged: "mean ± std, n = 3"
    (or "n = 2–4" where points differ); one replicate has no spread to show, so says so."""
    ns = sorted({int(n) for n in counts})
    if not ns:
        return f"{what} (mean ± std)"
    if ns == [1]:
        return f"{what} (1 replicate)"
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    return f"{what} (mean ± std, n = {n})"


def _finished(fig, axes, name: str, table: str, title: str) -> Drawing:
    """The tail of every figure: its title, one legend under the panels, named for the table it
    was drawn from."""
    fig.suptitle(title)
    _legend(fig, axes)
    return Drawing(name, fig, table)


# --- one look per scheme --------------------------------------------------------------------
# The paper's captions fix how a scheme looks (Fig. 2: random green circles, easiest red
# triangles, hardest pink crosses, all data dashed: t_r = 0 yellow, t*/2 orange, t* blue, the
# dense model grey; Fig. 11: lowest LMC scores light blue squares). Every figure draws a scheme
# so, whatever else it draws beside it; Fig. 12's forgetting ranking gets purple diamonds.

class Style(NamedTuple):
    color: str
    marker: Optional[str]
    linestyle: str

    def kw(self) -> dict:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}


CONVENTION = {
    ("subset", "random"): Style("#2ca02c", "o", "-"),
    ("subset", "easy"): Style("#d62728", "^", "-"),
    ("subset", "hard"): Style("#e377c2", "x", "-"),
    ("rank_by", "lmc"): Style("#6baed6", "s", "-"),
    ("rank_by", "forgetting"): Style("#9467bd", "D", "-"),
    ("all", "init"): Style("#e6b800", None, "--"),  # rewinding to initialisation: t_r = 0
    ("all", "half"): Style("#ff7f0e", None, "--"),  # the subsets' t_r: t*/2
    ("all", "full"): Style("#1f77b4", None, "--"),  # twice the subsets' t_r: t*
}
DENSE = Style("#7f7f7f", None, "--")
# A scheme the convention does not name (another all-data t_r, a second easy subset that only
# its class balance tells apart): a colour and marker the convention does not use, picked by
# the scheme's name so it is the same in every figure where it is free.
SPARE_COLOURS = ("#8c564b", "#17becf", "#bcbd22", "#000000", "#393b79", "#843c39", "#637939",
                 "#7b4173")
SPARE_MARKERS = ("v", "P", "*", "h", "<", ">", "d", "p")
# an all-data baseline's role: its t_r over the subsets' t_r
ROLES = {0.0: "init", 1.0: "half", 2.0: "full"}


def _num(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def subsets_t_r(configs: Iterable[dict]) -> Optional[float]:
    """The t_r the figure's subsets were pre-trained for (the smallest, if several); with no
    subsets, the smallest positive all-data t_r plays t*/2."""
    configs = list(configs)
    for pick in (lambda c: c.get("subset") not in ("all", None, ""),
                 lambda c: (_num(c.get("t_r")) or 0) > 0):
        ts = [_num(c.get("t_r")) for c in configs if pick(c)]
        ts = [t for t in ts if t is not None]
        if ts:
            return min(ts)
    return None


def _convention(config: dict, t: Optional[float]) -> Optional[Style]:
    """The convention's style for one scheme, ``None`` where it names none."""
    if config.get("subset") == "all":
        mine = _num(config.get("t_r"))
        if mine == 0:
            return CONVENTION[("all", "init")]
        role = ROLES.get(mine / t) if mine is not None and t else None
        return CONVENTION.get(("all", role))
    return CONVENTION.get(("rank_by", str(config.get("rank_by") or ""))) or CONVENTION.get(
        ("subset", str(config.get("subset"))))


def scheme_styles(configs: dict, names: dict, distinct=("color", "marker", "linestyle")
                  ) -> dict:
    """key -> ``Style``: the convention's for each scheme (``configs``: key -> columns; keys with
    one legend in ``names`` are one scheme, one style). No two legends share the ``distinct``
    fields (a figure telling schemes apart by colour alone asks for ``("color",)``): where two
    would, the one at its defaults keeps the convention's and the other a spare."""
    t = subsets_t_r(configs.values())
    first = {}
    for key in sorted(configs, key=lambda k: legend_order(names[k])):
        first.setdefault(names[key], key)
    claims = sorted(first, key=lambda n: (not all(is_default(f, configs[first[n]])
                                                  for f in DEFAULTS), legend_order(n)))
    spare = [(c, m) for c in SPARE_COLOURS for m in SPARE_MARKERS]
    taken, out = set(), {}
    for name in claims:
        config = configs[first[name]]
        style = _convention(config, t)
        if style is None or tuple(getattr(style, f) for f in distinct) in taken:
            line = "--" if config.get("subset") == "all" else "-"
            start = zlib.crc32(name.encode()) % len(spare)
            for i in range(len(spare)):
                c, m = spare[(start + i) % len(spare)]
                style = Style(c, None if line == "--" and "marker" not in distinct else m, line)
                if tuple(getattr(style, f) for f in distinct) not in taken:
                    break
        taken.add(tuple(getattr(style, f) for f in distinct))
        out[name] = style
    return {key: out[names[key]] for key in configs}


def _run_configs(rows: list[dict]) -> dict:
    """run -> its columns (its first row)."""
    out = {}
    for r in rows:
        out.setdefault(r["run"], r)
    return out


# --- tables ---------------------------------------------------------------------------------

def _remake(path: Path) -> str:
    return f"rerun 'lthfast report' to write {path.name} again"


def _table(report: Path, name: str, numeric: Iterable[str] = (),
           required: Iterable[str] = ()) -> list[dict]:
    """A report table's rows, ``numeric`` columns as floats (empty: NaN). Missing, cut, garbled
    or empty tables are one ``UserError`` line naming the file and what to do."""
    path = Path(report) / name
    if not path.exists():
        raise UserError(f"{path} is missing: run 'lthfast report' first (it needs runs of "
                        f"the kind this figure draws)")
    numeric, required = tuple(numeric), tuple(required)
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            lacking = [c for c in (*required, *numeric) if c not in header]
            if header and lacking:
                raise UserError(f"{path} is not a table this figure reads (no column "
                                f"{', '.join(lacking)}): {_remake(path)}")
            for row in reader:
                if None in row or None in row.values():
                    raise UserError(f"{path} line {reader.line_num}: the row has "
                                    f"{'more' if None in row else 'fewer'} cells than the "
                                    f"header (cut or damaged): {_remake(path)}")
                for c in numeric:
                    try:
                        row[c] = float(row[c]) if row[c] != "" else math.nan
                    except ValueError:
                        raise UserError(f"{path} line {reader.line_num}: {c} = {row[c]!r} is "
                                        f"not a number: {_remake(path)}") from None
                rows.append(row)
    except csv.Error as exc:
        raise UserError(f"{path} is not a readable CSV table ({exc}): {_remake(path)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text CSV table: {_remake(path)}") from None
    if not rows:
        raise UserError(f"{path} has no rows: nothing to draw (run the experiments this figure "
                        f"needs, then 'lthfast report')")
    return rows


def _imp(report: Path) -> list[dict]:
    path = Path(report) / "imp.csv"
    _table(report, "imp.csv", required=("run", "dataset", "level", "test_acc"))  # clear errors
    return read_csv(path)


def _columns(report: Path, name: str) -> list[str]:
    with open(Path(report) / name, newline="") as f:
        return next(csv.reader(f), [])


def _chosen(rows: list[dict], select, path: Path) -> list[dict]:
    """The rows a paper figure draws (``select``: its datasets, the runs its caption names;
    ``None``: a kind's, every row). None left is one error line, not an empty figure."""
    if select is None:
        return rows
    rows = select(rows)
    if not rows:
        raise UserError(f"{path} has none of the runs this figure draws (docs/FIGURES.md names "
                        "its datasets and sweep files)")
    return rows


# --- legends in words -----------------------------------------------------------------------

def _word(field: str, value, letters: dict) -> str:
    """One flag's value as a legend says it."""
    v = value
    fmt = {
        "dataset": lambda: str(v), "model": lambda: str(v),
        "subset_size": lambda: f"{v} examples", "rank_by": lambda: f"ranked by {v}",
        "scores": lambda: f"scores {letters.setdefault(v, chr(65 + len(letters)))}",
        "class_balanced": lambda: "class-balanced" if str(v) == "True" else "not class-balanced",
        "offset": lambda: f"offset {v}", "subset_seed": lambda: f"subset seed {v}",
        "shared_subset": lambda: "one subset for all replicates" if str(v) == "True"
        else "a subset per replicate",
        "t_r": lambda: f"t_r = {v}", "spawn_step": lambda: f"spawned at {v}",
        "pretrain_lr": lambda: f"pre-training lr {v}", "lr": lambda: f"lr {v}",
        "train_steps": lambda: f"{v} training steps", "batch_size": lambda: f"batch {v}",
        "label_noise": lambda: f"{float(v):.0%} label noise",
        "noise_seed": lambda: f"noise seed {v}",
        "seed": lambda: f"seed {v}", "children": lambda: f"{v} children",
        "alphas": lambda: f"α = {v}", "bn": lambda: f"BN {v}", "level": lambda: f"level {v}",
        "warmup": lambda: f"warmup {v}",
    }.get(field, lambda: f"{field.replace('_', ' ')} {v}")
    return fmt()


SCHEME_WORDS = {"all": "all data", "random": "random", "easy": "easiest", "hard": "hardest"}
# A subset flag's value when the command line leaves it out (by the subset's kind): a legend
# names the flag only where some curve sets it otherwise (Fig. 12's forgetting, Fig. 6's
# class-balanced easy subset), never to say that random is class-balanced and easy is not.
DEFAULTS = {"rank_by": lambda kind: "el2n" if kind in ("easy", "hard") else "",
            "class_balanced": lambda kind: str(kind == "random") if kind in (
                "random", "easy", "hard") else ""}


def is_default(field: str, config: dict) -> bool:
    if field not in DEFAULTS:
        return False
    value = config.get(field)
    return str("" if value is None else value) == DEFAULTS[field](config.get("subset"))


def describe(configs: dict, fields: Iterable[str], always: Iterable[str] = (),
             unique: bool = True) -> dict:
    """key -> a legend: the subset in words (with its size), then every field of ``fields``
    whose value differs between ``configs`` (key -> columns), and the ``always`` fields. A
    field only some configs set (the subset seed of an all-data run) is named only where
    nothing else tells them apart. Never a hash: ranking scores that differ are 'scores A/B'.
    ``unique=False``: keys may share a legend (a scheme drawn at several sizes, one per panel)."""
    unset = (None, "")
    fields, always = list(fields), list(always)
    letters: dict = {}

    def legends(with_unset: bool) -> dict:
        def differs(f):
            vals = {str(c.get(f)) for c in configs.values()
                    if with_unset or c.get(f) not in unset}
            if f in DEFAULTS and all(is_default(f, c) for c in configs.values()):
                return False
            if f == "scores" and not with_unset:  # ranking scores that only follow the
                by: dict = defaultdict(set)  # ranking (or the noise they were scored on)
                for c in configs.values():
                    if c.get(f) not in unset:
                        by[(str(c.get("rank_by")), str(c.get("label_noise")))].add(str(c[f]))
                return any(len(v) > 1 for v in by.values())
            return len(vals) > 1

        varying = [f for f in fields if f in always or differs(f)]
        out = {}
        for key, c in configs.items():
            parts = []
            if "subset" in c:
                parts.append(SCHEME_WORDS.get(c["subset"], str(c["subset"])) + (
                    f" {c['subset_size']}" if c.get("subset_size") not in unset else ""))
            parts += [_word(f, c[f], letters) for f in varying
                      if f not in ("subset", "subset_size") and c.get(f) not in unset]
            out[key] = ", ".join(parts) or "all runs"
        return out

    out = legends(with_unset=False)
    if not unique or len(set(out.values())) == len(out):
        return out
    return legends(with_unset=True)


# What a legend may name about an IMP run (every config column), and what a comparison fixes.
LEGEND_FIELDS = tuple(c for c in CONFIG_COLUMNS if c not in ("subset", "subset_size"))
SCHEME_FIELDS = ("subset", "subset_size", "rank_by", "scores", "class_balanced", "offset",
                 "subset_seed", "shared_subset", "t_r")
COMPARISON = tuple(c for c in CONFIG_COLUMNS if c not in SCHEME_FIELDS)


def labels(rows: list[dict]) -> dict[str, str]:
    """run -> a legend naming the subset, t_r and whatever else separates it from the others."""
    out = describe({row["run"]: row for row in rows}, LEGEND_FIELDS, always=("t_r",))
    seen: dict = defaultdict(int)
    for run in sorted(out):  # runs the table cannot tell apart: numbered, never hashed
        seen[out[run]] += 1
    count: dict = defaultdict(int)
    for run in sorted(out):
        if seen[out[run]] > 1:
            count[out[run]] += 1
            out[run] = f"{out[run]} (run {count[out[run]]} of {seen[out[run]]})"
    return out


def _groups(rows: list[dict], fields: Iterable[str]) -> dict[tuple, list[dict]]:
    out = defaultdict(list)
    for r in rows:
        out[tuple(str(r.get(f, "")) for f in fields)].append(r)
    return dict(sorted(out.items()))


def _title(rows: list[dict], fields: Iterable[str], all_rows: list[dict]) -> tuple[str, str]:
    """A comparison's title (its fixed flags that differ from other comparisons', in words,
    dataset and model always) and a file-name stem made of the same values."""
    fields = [f for f in fields if f in ("dataset", "model")
              or len({str(r.get(f, "")) for r in all_rows}) > 1]
    first, letters = rows[0], {}
    words = [_word(f, first.get(f, ""), letters) for f in fields
             if first.get(f, "") not in ("", None)]
    stem = "_".join(str(first.get(f, "")) for f in fields if first.get(f, "") not in ("", None))
    return ", ".join(words), "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem)


# --- IMP: accuracy vs sparsity --------------------------------------------------------------

def curves_by_run(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """run -> weights remaining, mean, std and count of test accuracy per level (finite
    replicates only; a diverged replicate has no accuracy to average)."""
    by = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["test_acc"] is not None and not row["diverged"]:
            by[row["run"]][row["level"]].append((row["weights_remaining"], row["test_acc"]))
    out = {}
    for name, levels in sorted(by.items()):
        order = sorted(levels)
        out[name] = {
            "level": np.array(order),
            "weights": np.array([np.mean([w for w, _ in levels[k]]) for k in order]),
            "mean": np.array([np.mean([a for _, a in levels[k]]) for k in order]),
            "std": np.array([np.std([a for _, a in levels[k]], ddof=1) if len(levels[k]) > 1
                             else 0.0 for k in order]),
            "n": np.array([len(levels[k]) for k in order]),
        }
    return out


def curves(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """legend -> curve (see ``curves_by_run``), one per run, i.e. per config."""
    names = labels(rows)
    return {names[run]: c for run, c in curves_by_run(rows).items()}


def percent_axis(ax, weights: Iterable[float]) -> None:
    """Weights remaining on a log axis, falling left to right, ticked at the levels drawn with
    plain labels (100%, 51%, 26%, ...)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ws = sorted({round(float(w), 6) for w in weights if w and w > 0}, reverse=True)
    ticks = ws[::max(1, math.ceil(len(ws) / 7))]
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}%" if v < 10 else f"{v:.0f}%"))
    if ws:
        ax.set_xlim(ws[0] * 1.08, ws[-1] / 1.08)  # inverted: dense on the left


def _plain_log(ax, values: Iterable[float]) -> None:
    """A log x axis ticked at the values drawn, labelled as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ticks = sorted({float(v) for v in values if v and v > 0})
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)


def _draw_runs(ax, rows: list[dict], names: dict[str, str],
               styles: Optional[dict] = None) -> None:
    """Curves of IMP runs; ``styles`` (run -> ``Style``, of every run of the figure) keeps a
    run's look across panels (default: the convention's for these runs)."""
    styles = styles or scheme_styles(_run_configs(rows), names)
    drawn = curves_by_run(rows)
    for run, c in drawn.items():
        x = 100 * c["weights"]
        line, = ax.plot(x, c["mean"], markersize=4, label=names[run], **styles[run].kw())
        ax.fill_between(x, c["mean"] - c["std"], c["mean"] + c["std"], alpha=0.15,
                        color=line.get_color(), linewidth=0)
    percent_axis(ax, [w * 100 for r in rows for w in [r["weights_remaining"]] if w])
    ax.set(xlabel="weights remaining",
           ylabel=spread("test accuracy", [n for c in drawn.values() for n in c["n"]]))


def dense_accuracy(rows: list[dict]) -> Optional[float]:
    """Fig. 2's "dense model": level 0 of IMP (all weights, trained from w_{t_r}) of the all-data
    run at t* (twice the subsets' t_r), else of the run rewound to initialisation; the mean over
    its finite replicates (``None``: neither run is drawn)."""
    t = subsets_t_r(_run_configs(rows).values())
    for want in ((2 * t) if t else None, 0):
        accs = [r["test_acc"] for r in rows if r["subset"] == "all" and r["level"] == 0
                and want is not None and _num(r["t_r"]) == want
                and r["test_acc"] is not None and not r["diverged"]]
        if accs:
            return float(np.mean(accs))
    return None


def _draw_dense(ax, acc: Optional[float]) -> None:
    """The dense model's accuracy (``dense_accuracy``), a dashed grey line across the panel."""
    if acc is not None:
        ax.axhline(acc, label="dense", **DENSE._replace(marker=None).kw(), linewidth=1)


def _best_sizes(rows: list[dict]) -> list[dict]:
    """Fig. 2: all-data runs, and per sized scheme (its subset kind and every flag but the size)
    the size with the best mean accuracy over the levels all its sizes reached."""
    curves_ = curves_by_run(rows)
    by_scheme = defaultdict(list)
    for run in {r["run"] for r in rows if r["subset_size"] is not None}:
        if run not in curves_:
            continue
        first = next(r for r in rows if r["run"] == run)
        scheme = tuple(str(first.get(c)) for c in CONFIG_COLUMNS if c != "subset_size")
        by_scheme[scheme].append(run)
    keep = {r["run"] for r in rows if r["subset_size"] is None}
    for runs in by_scheme.values():
        depth = min(len(curves_[run]["mean"]) for run in runs)
        keep.add(max(runs, key=lambda run: float(np.mean(curves_[run]["mean"][:depth]))))
    return [r for r in rows if r["run"] in keep]


def baseline_t_rs(t) -> set:
    """The all-data baselines of subsets pre-trained for ``t`` (the paper's t*/2): rewinding to
    initialisation, all data for as long (t*/2) and for twice as long (t*)."""
    return {0, t, 2 * t}


def _imp_comparisons(report: Path, select=None):
    """(rows, (title, stem)) per comparison of imp.csv (``select``: the rows a paper figure
    draws). Subsets pre-trained for different t_r are a figure each (Fig. 14a: t_r = 200, 14b:
    400), each with its own baselines (``baseline_t_rs``); a comparison of all-data runs only
    draws every one."""
    rows = _chosen(_imp(report), select, Path(report) / "imp.csv")
    if not any(r["test_acc"] is not None and not r["diverged"] for r in rows):
        raise UserError(f"{Path(report) / 'imp.csv'} has no finite IMP result: nothing to draw")
    for key, mine in _groups(rows, COMPARISON).items():
        title, stem = _title(mine, COMPARISON, rows)
        pretrain = sorted({r["t_r"] for r in mine if r["subset_size"] is not None})
        if not pretrain:
            yield mine, (title, stem)
            continue
        for t in pretrain:
            keep = [r for r in mine if (r["t_r"] == t if r["subset_size"] is not None
                                        else r["t_r"] in baseline_t_rs(t))]
            yield keep, ((title, stem) if len(pretrain) == 1 else
                         (f"{title}, subsets pre-trained for t_r = {t}", f"{stem}_tr{t}"))


@FIGURES.register("best")
def best(report: Path, select=None) -> list[Drawing]:
    out = []
    for mine, (title, stem) in _imp_comparisons(report, select):
        mine = _best_sizes(mine)
        fig, axes = _figure(width=5.2, height=3.8)
        names = labels(mine)
        _draw_runs(axes[0, 0], mine, names)
        _draw_dense(axes[0, 0], dense_accuracy(mine))
        axes[0, 0].set_title(f"IMP with rewinding, best subset size: {title}")
        _legend(fig, axes)
        out.append(Drawing(f"best_{stem}", fig, "imp.csv"))
    return out


def _scheme_names(rows: list[dict]) -> dict[str, str]:
    """run -> its legend without the subset size (a panel's title says it): one name, one
    colour per scheme across the panels of a figure."""
    first = {}
    for r in rows:
        first.setdefault(r["run"], {k: v for k, v in r.items() if k != "subset_size"})
    return describe(first, LEGEND_FIELDS, always=("t_r",), unique=False)


@FIGURES.register("sparsity")
def sparsity(report: Path, select=None) -> list[Drawing]:
    """A figure per comparison, a panel per subset size (all-data runs in every panel), a
    colour per scheme."""
    out = []
    for mine, (title, stem) in _imp_comparisons(report, select):
        sizes = sorted({r["subset_size"] for r in mine if r["subset_size"] is not None})
        fig, axes, flat = _panels(len(sizes), width=3.8, height=3.2, sharey=True)
        names = _scheme_names(mine)
        styles = scheme_styles(_run_configs(mine), names)
        dense = dense_accuracy(mine)  # the same line in every panel
        for ax, size in zip(flat, sizes or [None]):
            panel = [r for r in mine if r["subset_size"] in (size, None)]
            _draw_runs(ax, panel, names, styles)
            _draw_dense(ax, dense)
            ax.set_title(f"subsets of {size} examples" if size else "all data")
        out.append(_finished(fig, axes, f"sparsity_{stem}", "imp.csv",
                             f"IMP with rewinding: {title}"))
    return out


PAPER_LEVELS = (8, 10, 12)  # Fig. 3: 16.8%, 10.7%, 6.9% weights remaining


def size_curves(rows: list[dict]) -> dict[str, dict[int, dict[int, list[float]]]]:
    """legend -> level -> subset size -> test accuracies of the finite replicates, from imp.csv
    rows of sized subsets; a curve is the whole config but the subset size."""
    return _size_schemes(rows)[0]


def _size_schemes(rows: list[dict]) -> tuple[dict, dict]:
    """``size_curves``, and legend -> the scheme's columns."""
    by = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    keys = tuple(c for c in CONFIG_COLUMNS if c != "subset_size")
    for r in rows:
        if r["subset_size"] and r["test_acc"] is not None and not r["diverged"]:
            by[tuple(r[c] for c in keys)][r["level"]][r["subset_size"]].append(r["test_acc"])
    configs = {key: dict(zip(keys, key)) for key in by}
    names = describe(configs, [f for f in LEGEND_FIELDS if f != "subset_size"], always=("t_r",))
    return (dict(sorted((names[key], by[key]) for key in by)),
            {names[key]: config for key, config in configs.items()})


@FIGURES.register("size")
def size(report: Path, select=None) -> list[Drawing]:
    out = []
    for mine, (title, stem) in _imp_comparisons(report, select):
        curves_, schemes = _size_schemes(mine)
        if not curves_:
            continue
        base_rows = _run_configs([r for r in mine if r["subset_size"] is None])
        base_names = {run: f"all data, t_r = {c['t_r']}" for run, c in base_rows.items()}
        # one look per legend for the subsets' curves and the baselines' lines together
        styles = scheme_styles({**schemes, **base_rows}, {**{n: n for n in schemes},
                                                          **base_names})
        reached = sorted({level for c in curves_.values() for level in c})
        levels = [lv for lv in PAPER_LEVELS if lv in reached] or reached[-3:]
        fig, axes = _figure(1, len(levels), width=3.8, height=3.4, sharey=True)
        base = curves_by_run([r for r in mine if r["subset_size"] is None])
        base_t = {r["run"]: r["t_r"] for r in mine if r["subset_size"] is None}
        weights = {r["level"]: r["weights_remaining"] for r in mine}
        for ax, level in zip(axes[0], levels):
            for label, by_level in curves_.items():
                sizes = by_level.get(level)
                if not sizes:
                    continue
                xs = sorted(sizes)
                ax.errorbar(xs, [np.mean(sizes[x]) for x in xs],
                            yerr=[np.std(sizes[x], ddof=1) if len(sizes[x]) > 1 else 0
                                  for x in xs], markersize=3, capsize=2, label=label,
                            **styles[label].kw())
            for run, c in sorted(base.items(), key=lambda kv: base_t[kv[0]]):
                if level in c["level"]:
                    k = list(c["level"]).index(level)
                    ax.axhline(c["mean"][k], linestyle="--", color=styles[run].color,
                               label=base_names[run])
            _plain_log(ax, [x for c in curves_.values() for x in c.get(level, {})])
            counts = [len(accs) for c in curves_.values() for accs in c.get(level, {}).values()]
            counts += [c["n"][list(c["level"]).index(level)] for c in base.values()
                       if level in c["level"]]
            ax.set(xlabel="subset size (examples)", ylabel=spread("test accuracy", counts),
                   title=f"{100 * weights.get(level, 0.8 ** level):.3g}% weights (level {level})")
        out.append(_finished(fig, axes, f"size_{stem}", "imp.csv",
                             f"Accuracy vs pre-training subset size: {title}"))
    if not out:
        raise UserError("imp.csv has no IMP runs on subsets of a given size: nothing to draw")
    return out


# --- LMC ------------------------------------------------------------------------------------

def _symlog_steps(ax, steps: Iterable[float], label: str) -> None:
    """Steps on a log axis that still shows t = 0 apart from t = 1 (linear below 1)."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    steps = sorted(set(steps))
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ax.xaxis.set_major_locator(FixedLocator(steps if len(steps) <= 8 else steps[::2]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel(label)


# each barrier's onset in lmc_onset.csv (where its curve stays under the threshold), and its
# legend's words (the train and test onsets differ, and the legend is the figure's)
ONSET_OF = {"error_barrier": ("onset", "onset"),
            "test_error_barrier": ("onset_test", "onset (test error)")}


def _onsets(report: Path, keys: list[str]) -> dict[tuple, dict]:
    """curve key -> its lmc_onset.csv row (``lthfast report``'s onset of each curve); none where
    the table is missing (an older report: the curves are drawn without their onset)."""
    path = Path(report) / "lmc_onset.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {tuple(r.get(k, "") or "" for k in keys): r for r in csv.DictReader(f)}


@FIGURES.register("onset")
def onset(report: Path, select=None) -> list[Drawing]:
    columns = _columns(report, "lmc.csv") if (Path(report) / "lmc.csv").exists() else []
    rows = _table(report, "lmc.csv", numeric=("spawn_step", "error_barrier", "loss_barrier"),
                  required=("level", "replicate"))
    rows = _chosen(rows, select, Path(report) / "lmc.csv")
    rows = [r for r in rows if r["level"] == ""]  # children of dense parents w_t
    if not rows:
        raise UserError("lmc.csv has no children of a dense parent: run 'lthfast lmc' without "
                        "--level at a few --steps, then 'lthfast report'")
    has_test = "test_error_barrier" in columns
    keys = key_columns(columns, ("t_r", "spawn_step"))
    threshold = _threshold()
    onsets = _onsets(report, keys)
    out = []
    for _, mine in _groups(rows, [k for k in keys if k in ("dataset", "model")]).items():
        by = defaultdict(lambda: defaultdict(list))
        for r in mine:
            by[tuple(r.get(k, "") for k in keys)][r["spawn_step"]].append(r)
        # an onset is where a curve over spawn steps falls under the threshold: a scheme
        # spawned at one step only (Fig. 5's subsets) has none
        by = {k: v for k, v in by.items() if len(v) > 1}
        if not by:
            continue
        names = describe({k: dict(zip(keys, k)) for k in by},
                         [k for k in keys if k not in ("dataset", "model")])
        panels = [("error_barrier", "train error barrier"), ("loss_barrier", "train loss barrier")]
        if has_test:
            panels.insert(1, ("test_error_barrier", "test error barrier"))
        fig, axes = _figure(1, len(panels), width=3.8, height=3.3)
        for ax, (col, what) in zip(axes[0], panels):
            counts = []
            for key, steps in sorted(by.items(), key=lambda kv: names[kv[0]]):
                xs = sorted(steps)
                vals = [[float(r[col]) for r in steps[x] if r.get(col, "") not in ("", None)
                         and not (isinstance(r[col], float) and math.isnan(r[col]))] for x in xs]
                counts += [len(v) for v in vals if v]
                curve = ax.errorbar(xs, [np.mean(v) if v else np.nan for v in vals],
                                    yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals],
                                    marker="o", markersize=3, capsize=2, label=names[key])
                field, words = ONSET_OF.get(col, ("", ""))
                step = onsets.get(tuple(str(k) for k in key), {}).get(field, "")
                if step not in ("", None):  # the first step from which it stays connected
                    who = f"{names[key]}: " if len(by) > 1 else ""
                    ax.axvline(float(step), color=curve.lines[0].get_color(), linestyle=":",
                               linewidth=1.2, label=f"{who}{words} t̄ = {step}")
            ax.axhline(0, color="k", linewidth=0.6)  # a barrier below 0: the midpoint is better
            if col != "loss_barrier":
                from matplotlib.ticker import PercentFormatter

                ax.axhline(threshold, color="k", linestyle=":", linewidth=1,
                           label=f"{threshold:.0%}: connected below")
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            _symlog_steps(ax, [x for s in by.values() for x in s], "spawn step t")
            ax.set(ylabel=spread(what, counts), title=what)
        title, stem = _title(mine, ("dataset", "model"), rows)
        out.append(_finished(fig, axes, f"onset_{stem}", "lmc.csv",
                             f"Onset of linear mode connectivity: {title}"))
    if not out:
        raise UserError("lmc.csv has no dense parent spawned at two or more steps: run 'lthfast "
                        "lmc' at a few --steps (sweeps/onset_lmc_cifar10.toml), then 'lthfast "
                        "report'")
    return out


def _threshold() -> float:
    from .results import connectivity_threshold

    return connectivity_threshold()


@FIGURES.register("barrier_hist")
def barrier_hist(report: Path, select=None) -> list[Drawing]:
    """Fig. 5 left, centre: a figure per comparison (children measured alike: dataset, model,
    children, BN kind, ...), a panel per subset size with the all-data curves in each."""
    columns = _columns(report, "barrier_hist.csv") if (
        Path(report) / "barrier_hist.csv").exists() else []
    rows = _table(report, "barrier_hist.csv", numeric=("bin_left", "bin_right", "fraction",
                                                       "mean"), required=("barrier", "replicate"))
    rows = [r for r in rows if r["barrier"] == "loss_barrier" and r.get("level", "") == ""]
    if not rows:
        raise UserError("barrier_hist.csv has no per-example loss barriers of dense children: "
                        "nothing to draw")
    # Fig. 5's selection is of these rows: its all-data children are picked by the subsets'
    rows = _chosen(rows, select, Path(report) / "barrier_hist.csv")
    # a dense parent's spawn step is its t_r: the legend says it once
    keys = [k for k in key_columns(columns) if k not in ("barrier", "spawn_step")]
    fixed = [k for k in keys if k not in SCHEME_FIELDS]
    out = []
    for _, mine in _groups(rows, fixed).items():
        by = defaultdict(lambda: defaultdict(list))
        beyond = defaultdict(list)  # per curve, each replicate's fraction beyond the bins
        for r in mine:
            key = tuple(r.get(k, "") for k in keys)
            by[key][(r["bin_left"], r["bin_right"])].append(r["fraction"])
            if _num(r.get("beyond")) is not None:
                beyond[key].append(_num(r["beyond"]))
        configs = {k: dict(zip(keys, k)) for k in by}
        names = describe({k: {f: v for f, v in c.items() if f != "subset_size"}
                          for k, c in configs.items()},
                         [k for k in keys if k not in fixed], always=("t_r",), unique=False)
        styles = scheme_styles(configs, names, distinct=("color", "linestyle"))
        sizes = sorted({c.get("subset_size", "") for c in configs.values()} - {""}, key=int)
        fig, axes, flat = _panels(len(sizes), width=3.6, height=3.0, sharex=True, sharey=True)
        for ax, size in zip(flat, sizes or [""]):
            for key, bins in sorted(by.items(), key=lambda kv: legend_order(names[kv[0]])):
                if configs[key].get("subset_size", "") not in (size, ""):
                    continue
                edges = sorted(bins)
                x = [lo for lo, _ in edges] + [edges[-1][1]]
                y = [float(np.mean(bins[e])) for e in edges]
                # the tails beyond the bins are not drawn: the legend says how much (of the
                # scheme's examples, every size's together: one legend entry per scheme)
                cut = [c for k in by if names[k] == names[key] for c in beyond[k]]
                cut = float(np.mean(cut)) if cut else 0.0
                ax.stairs(y, x, linewidth=1.4, color=styles[key].color,
                          linestyle=styles[key].linestyle, label=names[key] + (
                              f" ({cut:.1%} beyond the range shown)" if cut > 0 else ""))
            ax.axvline(0, color="k", linewidth=0.6)
            ax.set(xlabel="per-example train loss barrier",
                   ylabel="fraction of training examples",
                   title=f"subsets of {size} examples" if size else "all data")
        title, stem = _title(mine, fixed, rows)
        out.append(_finished(fig, axes, f"barrier_hist_{stem}", "barrier_hist.csv",
                             f"Per-example train loss barriers of dense children: {title}"))
    return out


# Fig. 5 right: final accuracy at the paper's level per dataset (8.6% / 21% weights remaining)
FIG5_LEVEL = {"cifar100": 11, "cinic10": 7}
# App. A's midpoint barrier where the analysis records it apart from the verdict's barrier
MIDPOINT_BARRIER = ("midpoint_loss_barrier", "loss_barrier_midpoint", "loss_barrier")


@FIGURES.register("barriers")
def barriers(report: Path, select=None) -> list[Drawing]:
    """Fig. 5 right: a panel pair per dataset."""
    path = Path(report) / "schemes.csv"
    columns = _columns(report, "schemes.csv") if path.exists() else []
    barrier = next((c for c in MIDPOINT_BARRIER if c in columns), "loss_barrier")
    rows = _table(report, "schemes.csv", numeric=(barrier, "test_acc", "pretrain_acc", "level"),
                  required=("run", "replicate", "dataset"))
    rows = _chosen(rows, select, path)
    rows = [r for r in rows if not math.isnan(r[barrier]) and not math.isnan(r["test_acc"])]
    if not rows:
        raise UserError(f"{path} has no scheme with both a barrier and finite IMP results: run "
                        "'lthfast lmc' and 'lthfast imp' with the same flags (and IMP replicates "
                        "that do not diverge), then 'lthfast report'")
    datasets = sorted({r["dataset"] for r in rows})
    level_of = {}
    for d in datasets:
        reached = sorted({int(r["level"]) for r in rows if r["dataset"] == d})
        level_of[d] = FIG5_LEVEL[d] if FIG5_LEVEL.get(d) in reached else reached[-1]
    rows = [r for r in rows if int(r["level"]) == level_of[r["dataset"]]]
    # a legend per scheme (all data at each t_r, random, easiest, ...): sizes are its points
    keys = [c for c in key_columns(columns) if c not in (
        "dataset", "lmc", "level", "model", "subset_size", "scores")]
    values = [tuple(r.get(k, "") for k in keys) for r in rows]
    names = describe({v: dict(zip(keys, v)) for v in values}, keys, always=("t_r",))
    fig, axes = _figure(2, len(datasets), width=4.0, height=3.0)
    styles = scheme_styles({v: dict(zip(keys, v)) for v in values}, names,
                           distinct=("color", "marker"))
    for col, d in enumerate(datasets):
        mine = [r for r in rows if r["dataset"] == d]
        for r in mine:
            key = tuple(r.get(k, "") for k in keys)
            # a point needs a marker: all data's lines have none, so squares
            style = styles[key]
            for ax, x in ((axes[0, col], r["pretrain_acc"]), (axes[1, col], r[barrier])):
                ax.scatter(x, r["test_acc"], color=style.color, marker=style.marker or "s",
                           s=22, label=names[key])
        w = mine[0].get("weights_remaining", "")
        what = (f"{100 * float(w):.3g}% weights, level {level_of[d]}" if w
                else f"level {level_of[d]}")
        axes[0, col].set(title=f"{d}:\n{what}", xlabel="pre-train test accuracy of $w_{t_r}$",
                         ylabel="final test accuracy")
        axes[1, col].set(xlabel="mean train loss barrier at $w_{t_r}$" + (
                             "" if barrier == "loss_barrier" else " (midpoint)"),
                         ylabel="final test accuracy")
    fig.suptitle("Final sparse accuracy vs the dense initialisation (a point per replicate "
                 "and subset size)")
    _legend(fig, axes)
    return [Drawing("barriers", fig, "schemes.csv")]


# --- warmup ---------------------------------------------------------------------------------

@FIGURES.register("warmup")
def warmup(report: Path, select=None) -> list[Drawing]:
    columns = _columns(report, "warmup.csv") if (Path(report) / "warmup.csv").exists() else []
    rows = _table(report, "warmup.csv", numeric=("warmup", "test_acc"),
                  required=("subset", "replicate", "diverged"))
    rows = _chosen(rows, select, Path(report) / "warmup.csv")
    keys = [k for k in key_columns(columns, ("warmup",))]
    out = []
    for _, mine in _groups(rows, [k for k in ("dataset", "model") if k in keys]).items():
        by = defaultdict(lambda: defaultdict(list))
        diverged = defaultdict(int)
        for r in mine:
            key = tuple(r.get(k, "") for k in keys)
            # the authors average every run's final accuracy, diverged ones included
            by[key][r["warmup"]].append(0.0 if math.isnan(r["test_acc"]) else r["test_acc"])
            diverged[key] += r["diverged"] == "True"
        configs = {k: dict(zip(keys, k)) for k in by}
        # a scheme once in the legend, in one colour (the panel says the size)
        names = describe({k: {f: v for f, v in c.items() if f != "subset_size"}
                          for k, c in configs.items()},
                         [k for k in keys if k not in ("dataset", "model", "subset_size")],
                         unique=False)
        styles = scheme_styles(configs, names)
        sizes = sorted({c.get("subset_size", "") for c in configs.values()} - {""}, key=int)
        fig, axes = _figure(1, max(1, len(sizes)), width=4.0, height=3.4, sharey=True)
        for ax, size in zip(axes[0], sizes or [""]):
            for key, ts in sorted(by.items(), key=lambda kv: names[kv[0]]):
                if configs[key].get("subset_size", "") not in (size, ""):
                    continue
                xs = sorted(ts)
                n_div = f" ({diverged[key]} diverged)" if diverged[key] else ""
                ax.errorbar(xs, [np.mean(ts[x]) for x in xs],
                            yerr=[np.std(ts[x], ddof=1) if len(ts[x]) > 1 else 0 for x in xs],
                            markersize=3, capsize=2, label=names[key] + n_div,
                            **styles[key]._replace(marker=styles[key].marker or "s").kw())
            _symlog_steps(ax, [x for ts in by.values() for x in ts], "warmup iterations t")
            ax.set(ylabel=spread("final test accuracy", [
                       len(ts[x]) for key, ts in by.items()
                       if configs[key].get("subset_size", "") in (size, "") for x in ts]),
                   title=f"warmup on {size} examples" if size else "warmup on all data")
        title, stem = _title(mine, ("dataset", "model"), rows)
        out.append(_finished(fig, axes, f"warmup_{stem}", "warmup.csv",
                             f"Learning-rate warmup on data subsets: {title}\n(mean of every "
                             "replicate's final accuracy, diverged ones included)"))
    return out


# --- training dynamics (grads) --------------------------------------------------------------

def _grads(report: Path, series: Iterable[str], select=None):
    columns = _columns(report, "grads_steps.csv") if (
        Path(report) / "grads_steps.csv").exists() else []
    rows = _table(report, "grads_steps.csv", numeric=("step", "value"),
                  required=("series", "replicate"))
    rows = _chosen(rows, select, Path(report) / "grads_steps.csv")
    series = tuple(series)
    rows = [r for r in rows if r["series"] in series]
    if not rows:
        raise UserError(f"grads_steps.csv has no {' or '.join(series)} series: run 'lthfast "
                        "grads' (with --eval-every > 0 for accuracies), then 'lthfast report'")
    keys = key_columns(columns)
    for _, mine in _groups(rows, [k for k in keys if k in COMPARISON]).items():
        configs = {tuple(r.get(k, "") for k in keys): {k: r.get(k, "") for k in keys}
                   for r in mine}
        names = describe(configs, [k for k in keys if k in LEGEND_FIELDS], always=("t_r",))
        by = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        for r in mine:
            by[tuple(r.get(k, "") for k in keys)][r["series"]][r["step"]].append(r["value"])
        # a scheme's colour as in the IMP figures (line styles here say other things)
        styles = scheme_styles(configs, names, distinct=("color",))
        yield mine, names, styles, by, _title(mine, [k for k in keys if k in COMPARISON], rows)


SPEED = {"test_acc": ("test", "-"), "train_acc": ("train, all data", "--"),
         "subset_acc": ("train, the pre-training subset", ":"),
         "easy_acc": ("train, the easy subset", "-."),  # --eval-subset easy (Fig. 7a)
         "hard_acc": ("train, the hard eval subset", (0, (1, 3))),
         "random_acc": ("train, the random eval subset", (0, (5, 3)))}


def _band(ax, steps: dict, **kw):
    xs = sorted(steps)
    m = np.array([np.mean(steps[x]) for x in xs])
    s = np.array([np.std(steps[x], ddof=1) if len(steps[x]) > 1 else 0.0 for x in xs])
    line, = ax.plot(xs, m, **kw)
    ax.fill_between(xs, m - s, m + s, alpha=0.15, color=line.get_color(), linewidth=0)
    return line


@FIGURES.register("dynamics")
def dynamics(report: Path, select=None) -> list[Drawing]:
    """Fig. 7: (a) accuracies vs step, (b) gradient coherence vs step, a curve per scheme."""
    out = []
    for mine, names, styles, by, (title, stem) in _grads(report, ("coherence", *SPEED), select):
        fig, axes = _figure(1, 2, width=4.4, height=3.4)
        from matplotlib.lines import Line2D

        drawn = set()
        for key, series in sorted(by.items(), key=lambda kv: names[kv[0]]):
            colour = styles[key].color
            for name, (what, style) in SPEED.items():
                if name in series:
                    drawn.add(name)
                    _band(axes[0, 0], series[name], color=colour, linestyle=style,
                          label="_" + what)  # colour: the scheme; line style: the accuracy
            # each scheme named once (its colour), in panel (b) or by a proxy
            _band(axes[0, 1], series["coherence"], color=colour, marker="o", markersize=2,
                  label=names[key]) if "coherence" in series else axes[0, 1].plot(
                [], [], color=colour, label=names[key])
        for name, (what, style) in SPEED.items():
            if name in drawn:
                axes[0, 0].add_line(Line2D([], [], color="0.3", linestyle=style, label=what))
        counts = [len(vs) for series in by.values() for name, steps in series.items()
                  if name in SPEED for vs in steps.values()]
        axes[0, 0].set(xlabel="pre-training step", ylabel=spread("accuracy", counts),
                       title="(a) learning speed")
        axes[0, 1].set(xlabel="pre-training step", ylabel="cosine to the mean gradient",
                       title="(b) gradient coherence")
        from matplotlib.ticker import MaxNLocator

        for ax in axes[0]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps: no 0.25 ticks
        out.append(_finished(fig, axes, f"dynamics_{stem}", "grads_steps.csv",
                             f"Training dynamics: {title}"))
    return out


@FIGURES.register("grad_norms")
def grad_norms(report: Path, select=None) -> list[Drawing]:
    """Fig. 8: the distribution of per-batch gradient norms during pre-training, per scheme."""
    out = []
    for mine, names, styles, by, (title, stem) in _grads(report, ("grad_norm",), select):
        fig, axes = _figure(width=5.0, height=3.4)
        values = {k: [v for vs in s["grad_norm"].values() for v in vs] for k, s in by.items()}
        finite = np.array([v for vs in values.values() for v in vs if math.isfinite(v)])
        edges = np.linspace(finite.min(), finite.max() if finite.max() > finite.min()
                            else finite.min() + 1, 31) if finite.size else np.linspace(0, 1, 31)
        for key, vs in sorted(values.items(), key=lambda kv: names[kv[0]]):
            counts, _ = np.histogram([v for v in vs if math.isfinite(v)], edges)
            axes[0, 0].stairs(counts / max(counts.sum(), 1), edges, linewidth=1.4,
                              color=styles[key].color, linestyle=styles[key].linestyle,
                              label=f"{names[key]} ({len(vs)} batches)")
        axes[0, 0].set(xlabel="mini-batch gradient norm", ylabel="fraction of batches",
                       title=f"Gradient norms during pre-training: {title}")
        _legend(fig, axes)
        out.append(Drawing(f"grad_norms_{stem}", fig, "grads_steps.csv"))
    return out


@FIGURES.register("grads")
def grads(report: Path, select=None) -> list[Drawing]:
    """Figs. 7 and 8."""
    return dynamics(report, select) + grad_norms(report, select)


# --- errors (Fig. 9) ------------------------------------------------------------------------

@FIGURES.register("errors")
def errors(report: Path, select=None) -> list[Drawing]:
    """Per-example error distributions of one network (replicate 0, as the paper: not averaged
    over replicates): top, a panel per pre-training scheme, dense (level 0) vs its sparse
    projection; bottom, every scheme's dense and every scheme's sparse distribution."""
    columns = _columns(report, "errors_hist.csv") if (
        Path(report) / "errors_hist.csv").exists() else []
    rows = _table(report, "errors_hist.csv", numeric=("bin_left", "bin_right", "fraction",
                                                      "level", "replicate"))
    rows = _chosen(rows, select, Path(report) / "errors_hist.csv")
    first = min(r["replicate"] for r in rows)
    rows = [r for r in rows if r["replicate"] == first]
    keys = [k for k in key_columns(columns, ("level",)) if k not in ("lr", "train_steps")]
    out = []
    for _, mine in _groups(rows, [k for k in keys if k in COMPARISON]).items():
        by = defaultdict(lambda: defaultdict(dict))
        for r in mine:
            by[tuple(r.get(k, "") for k in keys)][int(r["level"])][(r["bin_left"],
                                                                    r["bin_right"])] = r["fraction"]
        names = describe({k: dict(zip(keys, k)) for k in by},
                         [k for k in keys if k in LEGEND_FIELDS], always=("t_r",))
        schemes = sorted(by, key=lambda k: names[k])
        # a scheme's colour as in the IMP figures; the line style says dense or sparse
        styles = scheme_styles({k: dict(zip(keys, k)) for k in by}, names, distinct=("color",))
        fig, axes = _figure(2, max(2, len(schemes)), width=3.4, height=2.8)
        for ax in axes[1, 2:]:
            ax.set_visible(False)
        for i, key in enumerate(schemes):
            for level, bins in sorted(by[key].items()):
                edges = sorted(bins)
                x = [lo for lo, _ in edges] + [edges[-1][1]]
                y = [bins[e] for e in edges]
                style = "-" if level == 0 else "--"
                colour = styles[key].color
                axes[0, i].stairs(y, x, linestyle=style, color=colour,
                                  label=f"{names[key]}, level {level}")
                axes[1, 0 if level == 0 else 1].stairs(y, x, linestyle=style, color=colour,
                                                       label=f"{names[key]}, level {level}")
            axes[0, i].set(title=names[key], xlabel="per-example error ‖p − y‖",
                           ylabel="fraction of examples")
        for ax in axes[0, len(schemes):]:
            ax.set_visible(False)
        axes[1, 0].set(title="dense (level 0)", xlabel="per-example error ‖p − y‖",
                       ylabel="fraction of examples")
        axes[1, 1].set(title="sparse projection", xlabel="per-example error ‖p − y‖",
                       ylabel="fraction of examples")
        title, stem = _title(mine, [k for k in keys if k in COMPARISON], rows)
        out.append(_finished(fig, axes, f"errors_{stem}", "errors_hist.csv",
                             f"Per-example errors at $w_{{t_r}}$, one network: {title}"))
    return out


# --- scores (Fig. 10) -----------------------------------------------------------------------

@FIGURES.register("scores")
def scores(report: Path, select=None) -> list[Drawing]:
    rows = _table(report, "scores.csv", numeric=("example", "value", "steps"),
                  required=("score", "dataset", "run"))
    rows = _chosen(rows, select, Path(report) / "scores.csv")
    out = []
    for (dataset,), mine in _groups(rows, ("dataset",)).items():
        el2n = {r["run"]: r for r in mine if r["score"] == "el2n"}
        runs = defaultdict(dict)
        for r in mine:
            runs[r["run"]][int(r["example"])] = r["value"]
        el2n_run = max(el2n, key=lambda run: el2n[run]["steps"]) if el2n else None
        lmc = sorted({(r["steps"], str(r.get("children", "")), r["run"]) for r in mine
                      if r["score"] == "lmc"})
        if el2n_run is None or not lmc:
            continue
        fig, axes = _figure(1, len(lmc), width=3.4, height=3.2, sharex=True)
        x_all = runs[el2n_run]
        rng = np.random.default_rng(0)  # a fixed sample: the same points on every redraw
        repeated = {steps for steps, _, _ in lmc if sum(s == steps for s, _, _ in lmc) > 1}
        for ax, (steps, children, run) in zip(axes[0], lmc):
            common = sorted(set(x_all) & set(runs[run]))
            pick = sorted(rng.choice(common, min(len(common), 4000), replace=False))
            ax.scatter([x_all[i] for i in pick], [runs[run][i] for i in pick], s=3, alpha=0.4,
                       color="C0", label="a training example")
            ax.axhline(0, color="k", linewidth=0.6)
            ax.set(xlabel=f"EL2N score ({int(el2n[el2n_run]['steps'])} iterations)",
                   ylabel="LMC score (train loss barrier)", title=f"LMC score at {int(steps)}" + (
                       f", {children} children" if steps in repeated and children else ""))
        fig.suptitle(f"EL2N vs LMC scores: {dataset}")
        _legend(fig, axes)
        stem = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in dataset)
        out.append(Drawing(f"scores_{stem}", fig, "scores.csv"))
    if not out:
        raise UserError("scores.csv has no dataset with both EL2N and LMC scores: run 'lthfast "
                        "scores el2n' and 'lthfast scores lmc', then 'lthfast report'")
    return out


# --- drawing and saving ---------------------------------------------------------------------

def _write(figure, path: Path, formats: Iterable[str], source: str) -> list[Path]:
    """The one save-and-close tail: each format beside ``path``, the source in the metadata."""
    plt = _pyplot()
    out = []
    try:
        for fmt in formats:
            buf = io.BytesIO()
            meta = {"Subject": source} if fmt == "pdf" else {"Source": source}
            figure.savefig(buf, format=fmt, dpi=130, metadata=meta)
            out.append(atomic_write_bytes(path.with_suffix(f".{fmt}"), buf.getvalue()))
    finally:
        plt.close(figure)
    return out


def save(drawing: Drawing, report: Path) -> list[Path]:
    """fig_<kind>_<comparison>.png / .pdf, or figN_<kind>_<comparison> for a paper figure's
    runs (``draw``: a selection of the kind's, so never under the kind's name)."""
    name = drawing.stem if re.match(r"fig\d+_", drawing.stem) else f"fig_{drawing.stem}"
    return _write(drawing.figure, Path(report) / f"{name}.png", ("png", "pdf"), drawing.source)


def imp_figure(rows: list[dict], title: str):
    """One panel of IMP runs (read back from an imp.csv table): accuracy vs weights remaining,
    mean ± std bands, all-data runs dashed (``lthfast demo``'s figure)."""
    fig, axes = _figure(width=5.6, height=3.9)
    _draw_runs(axes[0, 0], rows, labels(rows))
    axes[0, 0].set_title(title)
    _legend(fig, axes)
    return fig


def save_png(figure, path: Path, source: str) -> Path:
    return _write(figure, Path(path), ("png",), source)[0]


# --- the runs each paper figure draws -------------------------------------------------------
# A kind draws every comparison of its table; a paper figure draws the runs its caption names
# (the same tables hold Fig. 2's grid, Fig. 12's forgetting subsets, Fig. 11's LMC-ranked ones,
# Fig. 5's LMC-score children, ...) on its datasets (one imp.csv holds CIFAR-10's Fig. 13b and
# CINIC-10's Fig. 14). Its files are named figN_<kind>_<comparison>.

def _noise(row: dict) -> float:
    return float(row.get("label_noise") or 0)


def _plain(row: dict) -> bool:
    """All data, or a random / easiest / hardest subset as Fig. 2 makes it (EL2N ranking,
    random class-balanced, easy and hard not)."""
    return row["subset"] == "all" or (
        row["subset"] in ("random", "easy", "hard")
        and all(is_default(f, row) for f in DEFAULTS))


def diet(rows: list[dict]) -> list[dict]:
    """Figs. 2, 3, 13, 14: all data and Fig. 2's subsets, clean labels."""
    return [r for r in rows if _noise(r) == 0 and _plain(r)]


def noisy(rows: list[dict]) -> list[dict]:
    """Figs. 4, 15: pre-training with label noise (all data, random and easiest subsets), and
    rewinding to initialisation (t_r = 0: nothing was pre-trained, so the same run for every
    noise level) in each."""
    out = [r for r in rows if _noise(r) > 0 and _plain(r) and r["subset"] != "hard"]
    init = [r for r in rows if r["subset"] == "all" and r["t_r"] == 0 and _noise(r) == 0]
    for dataset, level in sorted({(r["dataset"], r["label_noise"]) for r in out}):
        out += [r | {"label_noise": level, "run": f"{r['run']} (noise {level})"} for r in init
                if r["dataset"] == dataset]
    return out


def _ranked_by(score: str):
    """Figs. 11 (lmc) and 12 (forgetting): subsets ranked by ``score`` against the EL2N-ranked
    and random subsets of the same sizes, t_r and class balance, with the all-data baselines."""
    def select(rows: list[dict]) -> list[dict]:
        mine = [r for r in rows if r.get("rank_by") == score and _noise(r) == 0]
        datasets = {r["dataset"] for r in mine}
        sizes = {r["subset_size"] for r in mine}
        t_rs = {r["t_r"] for r in mine}
        baselines = {b for t in t_rs for b in baseline_t_rs(t)}
        balanced = {str(r["class_balanced"]) for r in mine}
        others = [r for r in rows if r["dataset"] in datasets and _noise(r) == 0 and (
            (r["subset"] == "all" and r["t_r"] in baselines) or (
                r["subset_size"] in sizes and r["t_r"] in t_rs and (
                    (r["subset"] == "easy" and r.get("rank_by") == "el2n"
                     and str(r["class_balanced"]) in balanced)
                    or (r["subset"] == "random" and score == "lmc" and _plain(r)))))]
        return mine + others
    return select


HIST_IGNORE = {*SCHEME_FIELDS, "spawn_step", "run", "parent", "replicate", "bin_left",
               "bin_right", "fraction", "mean", "beyond", "barrier", "level"}


def fig5_barriers(rows: list[dict]) -> list[dict]:
    """Fig. 5 left, centre: the subsets' children (t*/2) with the all-data children at t*/2 and
    t* measured the same way (children, alphas, BN kind); not the onset's or LMC scores'."""
    def how(r):
        return tuple(sorted((k, str(v)) for k, v in r.items() if k not in HIST_IGNORE))

    subsets = [r for r in rows if r["subset"] != "all"]
    pretrain = defaultdict(set)
    for r in subsets:
        pretrain[how(r)] |= {int(float(r["t_r"])), 2 * int(float(r["t_r"]))}
    return subsets + [r for r in rows if r["subset"] == "all"
                      and int(float(r["t_r"])) in pretrain.get(how(r), ())]


def on_datasets(datasets: Iterable[str]):
    """The rows of ``datasets`` (full-scale names) or of their smoke-scale stand-ins (a table's
    ``dataset`` holds the canonical name, which is how ``STAND_INS`` spells them)."""
    names = frozenset(name for d in datasets for name in (d, STAND_INS[d]))

    def select(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r.get("dataset") in names]
    return select


def _then(first, then=None):
    """``first``'s rows, and of those ``then``'s (``None``: all of them)."""
    if then is None:
        return first
    return lambda rows: then(first(rows))


SELECT = {  # paper figure -> kind -> the rows of its table that figure draws
    **{name: {"best": diet, "size": diet, "sparsity": diet}
       for name in ("fig2", "fig3", "fig13", "fig14")},
    "fig4": {"best": noisy}, "fig15": {"sparsity": noisy},
    "fig11": {"sparsity": _ranked_by("lmc")}, "fig12": {"sparsity": _ranked_by("forgetting")},
    "fig5": {"barrier_hist": fig5_barriers},
}


def draw(name: str, report: Path) -> list[Drawing]:
    """The figures of ``name``, unsaved: a kind's of every run, or the paper's ``figN``'s of its
    datasets' runs (``PAPER``) that its caption names (``SELECT``), named ``figN_<kind>_...``."""
    if name not in PAPER and name not in FIGURES:
        raise UserError(f"unknown figure '{name}' (known: {', '.join(FIGURES)}, "
                        f"{', '.join(PAPER)}; 'lthfast plot --list' shows the map)")
    if name not in PAPER:
        return FIGURES[name](Path(report))
    out = []
    for kind in PAPER[name].kinds:
        select = _then(on_datasets(PAPER[name].datasets), SELECT.get(name, {}).get(kind))
        out += [d._replace(stem=f"{name}_{d.stem}")
                for d in FIGURES[kind](Path(report), select=select)]
    return out


def plot(name: str, report: Path) -> list[Path]:
    """Draw and save every figure of ``name``; the paths written."""
    drawings = draw(name, report)
    if not drawings:
        raise UserError(f"nothing to draw for '{name}' from the tables in {report}")
    out = []
    for i, d in enumerate(drawings):
        try:
            out += save(d, report)
        except BaseException:
            for rest in drawings[i + 1:]:
                _pyplot().close(rest.figure)
            raise
    return out
