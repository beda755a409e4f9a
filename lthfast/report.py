"""``lthfast report`` as a library function: the run store -> one CSV table per kind of result
under ``<out>/report`` (+ the accuracy-vs-sparsity figure per comparison), and the list of files
it could not read.

Tables, each written only when the store holds such runs: ``imp.csv`` (a row per IMP run,
replicate and level), ``lmc.csv`` (per LMC summary and replicate), ``lmc_onset.csv`` (the onset
of linear mode connectivity per LMC config), ``schemes.csv`` (Fig. 5 right: per IMP replicate and
level, beside the barrier of its w_{t_r}), ``barrier_hist.csv`` (Fig. 5 left/centre),
``warmup.csv`` (Fig. 6), ``analyses.csv`` (grads and errors scalars), ``grads_steps.csv``
(Figs. 7, 8), ``errors_hist.csv`` (Fig. 9), ``scores.csv`` (Fig. 10). ``lthfast plot`` draws the
rest of the paper's figures from them.

A damaged file (a truncated ``done.json``, summary or ``.npy``) never stops the report nor
silently drops anything else: ``Report.damaged`` names each, what was left out and how to
repair it.

    lthfast report --out runs     # -> runs/report/imp.csv last; damaged files named on stderr
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import results as R
from .errors import UserError


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)  # tables and figures, imp.csv last
    damaged: list[str] = field(default_factory=list)  # one line per file that was left out


def report(out: Path, plots: bool = True) -> Report:
    """Write every table (and, with ``plots``, the accuracy-vs-sparsity figures) for the runs
    under ``out``. Raises ``UserError`` when there is nothing to report."""
    out = Path(out)
    damaged = R.Damaged()
    imp = R.imp_rows(out, damaged)
    lmc = R.lmc_rows(out, damaged)
    warm = R.warmup_rows(out, damaged)
    other = R.analysis_rows(out, damaged)
    if not (imp or lmc or warm or other):
        detail = f" ({len(damaged)} damaged: {damaged[0]})" if damaged else ""
        raise UserError(f"no finished IMP, LMC, warmup or analysis runs under {out}{detail}")
    folder = out / "report"
    done = Report(damaged=damaged)

    def write(rows, name, cols):
        done.written.append(R.write_csv(rows, folder / name, cols))
    if warm:
        write(warm, "warmup.csv", R.WARMUP_COLUMNS)
    if other:
        write(other, "analyses.csv", R.analysis_columns(other, R.ANALYSIS_COLUMNS))
        steps = R.grads_step_rows(out, damaged)
        if steps:
            write(steps, "grads_steps.csv", R.GRADS_STEP_COLUMNS)
        hist = R.errors_hist_rows(out, damaged)
        if hist:
            write(hist, "errors_hist.csv", R.ERRORS_HIST_COLUMNS)
    if lmc:
        columns = R.analysis_columns(lmc, R.LMC_COLUMNS)
        write(lmc, "lmc.csv", columns)
        onset = R.onset_rows(lmc, columns)
        write(onset, "lmc_onset.csv", R.onset_columns(onset))
        hist = R.barrier_hist_rows(out, damaged)
        if hist:
            write(hist, "barrier_hist.csv",
                  R.analysis_columns(hist, (*R.LMC_COLUMNS[:R.LMC_COLUMNS.index("replicate") + 1],
                                            *R.BARRIER_HIST_VALUES)))
        if imp:
            schemes = R.scheme_rows(imp, lmc)
            write(schemes, "schemes.csv", R.analysis_columns(schemes, R.SCHEME_COLUMNS))
    scores = R.score_rows(out, damaged)
    if scores:
        write(scores, "scores.csv", R.SCORE_COLUMNS)
    if imp:
        # the data-diet question per score: IMP by the score that ranked the subset
        from .experiments.score_compare import IMP_BY_SCORE_COLUMNS, imp_by_score_rows

        write(imp_by_score_rows(imp), "imp_by_score.csv", IMP_BY_SCORE_COLUMNS)
        table = R.write_csv(imp, folder / "imp.csv")
        if plots:
            from .figures import plot

            done.written += [p for p in plot("sparsity", folder) if p.suffix == ".png"]
        done.written.append(table)
    done.damaged = list(damaged)
    return done
