"""Command line: one small function per command — parse, call the library, print the artifact.

Each command that writes an artifact prints its path as the last line of stdout. User errors
print one line on stderr and exit 2.

    lthfast build-beton digits && lthfast imp --dataset digits --subset random --size 256 --levels 3
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="lthfast: lottery tickets on a data diet, fast.")

ROOT = typer.Option(Path("datasets"), "--root", envvar="LTHFAST_DATA", help="data root")
OUT = typer.Option(Path("runs"), "--out", envvar="LTHFAST_RUNS", help="runs root")
SEED = typer.Option(0, "--seed", help="base seed (init, order and augmentation seeds derive from it)")
DEVICE = typer.Option(None, "--device", help="cuda or cpu (default: cuda if available)")
DETERMINISTIC = typer.Option(False, "--deterministic", help="deterministic kernels (CPU: bit-exact reruns)")
CHECKPOINT_EVERY = typer.Option(200, "--checkpoint-every", envvar="LTHFAST_CHECKPOINT_EVERY",
                                help="iterations between checkpoints of a training stage (0: never)")
LOADER = typer.Option("device", "--loader", envvar="LTHFAST_LOADER",
                      help="device (lthfast's device-resident loader) or ffcv (stock ffcv Loaders "
                           "over the betons, for comparison; no label noise, not deterministic)")
# Datasets that need no download or source: built on first use.
EMBEDDED = ("digits",)


# Choices come from the registries (imported late: --help stays fast), so a new subset rule,
# score or loader needs no CLI change; ``.lookup`` turns a typo into the one-line error.
def subset_kinds():
    from .data.subsets import SUBSET_RULES

    return SUBSET_RULES


def score_kinds():
    from .experiments.scores import SCORES

    return SCORES


def loader_kinds():
    from .data.streams import STREAMS

    return STREAMS


def runtime(root: Path, out: Path, device: Optional[str], deterministic: bool,
            compile: Optional[bool], checkpoint_every: int, loader: str = "device"):
    from .experiments.common import Runtime, default_device, setup_torch
    from .progress import make_progress

    rt = Runtime(root=root, out=out, device=device or default_device(),
                 deterministic=deterministic, compile=compile, progress=make_progress(),
                 checkpoint_every=max(0, checkpoint_every), loader=loader)
    setup_torch(rt)
    return rt


def open_data(root: Path, dataset: str):
    from .data.arrays import open_dataset
    from .data.build import build_dataset
    from .data.sources import get_source

    get_source(dataset)
    if dataset in EMBEDDED and not (root / dataset / "meta.json").exists():
        build_dataset(dataset, root)
    return open_dataset(root, dataset)


@app.command("build-beton")
def build_beton(name: str = typer.Argument(..., help="cifar10, cifar100, cinic10, digits, synthetic"),
                source: Optional[str] = typer.Option(None, help="local archive/folder (synthetic: key=value options)"),
                root: Path = ROOT,
                force: bool = typer.Option(False, help="rebuild even if already built")):
    """Convert a dataset once into arrays, FFCV betons and meta.json under ROOT/NAME."""
    from .data.build import build_dataset

    print(build_dataset(name, root, source=source, force=force))


@app.command()
def subset(kind: str = typer.Argument(..., help="all, random, easy or hard"),
           dataset: str = typer.Option(..., help="dataset name"),
           size: Optional[int] = typer.Option(None, help="number of examples M"),
           seed: int = typer.Option(0, help="seed for random subsets"),
           scores: Optional[Path] = typer.Option(None, help="float .npy of per-example scores (easy/hard)"),
           offset: int = typer.Option(0, help="skip this many of the easiest/hardest first"),
           class_balanced: Optional[bool] = typer.Option(None, "--class-balanced/--no-class-balanced",
                                                         help="default: yes for random, no for easy/hard"),
           label_noise: float = typer.Option(0.0, help="also save labels with this fraction re-drawn"),
           noise_seed: int = typer.Option(0, help="seed of the label noise"),
           root: Path = ROOT):
    """Write a subset of train indices as .npy under ROOT/DATASET/subsets and print its path."""
    from .data.subsets import SubsetSpec, check_noise_fraction, noisy_labels_path, write_subset

    subset_kinds().lookup(kind)
    check_noise_fraction(label_noise)
    ds = open_data(root, dataset)
    if label_noise:
        print(noisy_labels_path(ds, label_noise, noise_seed))
    spec = SubsetSpec(kind=kind, size=size, seed=seed,
                      scores=str(scores) if scores else None, offset=offset,
                      class_balanced=class_balanced)
    print(write_subset(ds, spec))


def default_score_steps(score: str, preset) -> int:
    # EL2N is read early in training (appendix A); forgetting looks at the whole course of it.
    return preset.train_steps if score == "forgetting" else preset.el2n_steps


def scores_path(rt, ds, score: str, preset, models: int, steps: Optional[int], seed: int,
                label_noise: float, noise_seed: int, el2n_defaults: bool) -> Path:
    from .experiments.scores import ScoreConfig, compute_scores

    cfg = ScoreConfig(score=score, dataset=ds.name,
                      model=preset.el2n_model if el2n_defaults else preset.model,
                      models=models, steps=default_score_steps(score, preset) if steps is None else steps,
                      batch_size=preset.batch_size, lr=preset.lr, milestones=preset.milestones,
                      seed=seed, label_noise=label_noise, noise_seed=noise_seed,
                      momentum=preset.momentum, weight_decay=preset.weight_decay,
                      gamma=preset.gamma)
    return compute_scores(rt, cfg, ds)


@app.command()
def imp(dataset: str = typer.Option("cifar10", envvar="LTHFAST_DATASET", help="dataset (preset from Table 1)"),
        subset: str = typer.Option("all", help="pre-training subset: all, random, easy, hard"),
        size: Optional[int] = typer.Option(None, help="subset size M"),
        subset_file: Optional[Path] = typer.Option(None, help="pre-train on these train indices (.npy)"),
        subset_seed: int = typer.Option(0, help="seed of a random subset"),
        class_balanced: Optional[bool] = typer.Option(None, "--class-balanced/--no-class-balanced"),
        offset: int = typer.Option(0, help="easy/hard: skip this many first"),
        scores: Optional[Path] = typer.Option(None, help="easy/hard: score file (default: EL2N, computed or reused)"),
        steps: Optional[int] = typer.Option(None, help="pre-training iterations t_r (default: t* of the preset)"),
        levels: int = typer.Option(12, help="pruning levels (level k keeps 0.8^k of the weights)"),
        replicates: int = typer.Option(1, help="independent replicates (trained packed)"),
        label_noise: float = typer.Option(0.0, help="fraction of labels re-drawn, in pre-training only"),
        noise_seed: int = typer.Option(0, help="seed of the label noise"),
        rank_by: str = typer.Option("el2n", help="easy/hard without --scores: el2n or forgetting"),
        el2n_models: int = typer.Option(10, help="K networks in the score ensemble"),
        el2n_steps: Optional[int] = typer.Option(None, help="score iterations (default per dataset)"),
        model: Optional[str] = typer.Option(None, help="override the preset's network"),
        batch_size: Optional[int] = typer.Option(None, help="override the preset's batch size"),
        lr: Optional[float] = typer.Option(None, help="override the training lr"),
        pretrain_lr: Optional[float] = typer.Option(None, help="override the pre-training lr"),
        train_steps: Optional[int] = typer.Option(None, help="override T, the schedule's iterations"),
        compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile (default: on for CUDA)"),
        loader: str = LOADER,
        root: Path = ROOT, out: Path = OUT, seed: int = SEED,
        device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
        checkpoint_every: int = CHECKPOINT_EVERY):
    """IMP with rewinding to t_r after pre-training on a subset; prints the run directory."""
    from .config import Overrides, preset_for
    from .data.streams import check_loader
    from .data.subsets import SubsetSpec, check_noise_fraction, load_subset, make_subset
    from .experiments.imp import make_config, run_imp

    from .models import resolve

    # Everything checkable without data is checked first: a typo never builds or writes anything.
    preset = Overrides(model, batch_size, lr, pretrain_lr, train_steps).apply(preset_for(dataset))
    resolve(preset.model)
    subset_kinds().lookup(subset)
    score_kinds().lookup(rank_by)
    loader_kinds().lookup(loader)
    check_noise_fraction(label_noise)
    ds = open_data(root, dataset)
    check_loader(loader, ds, label_noise, deterministic)
    rt = runtime(root, out, device, deterministic, compile, checkpoint_every, loader)
    if subset_file is not None:
        indices, name = load_subset(subset_file, ds.train_size), subset_file.name
    else:
        if subset in ("easy", "hard") and scores is None:
            scores = scores_path(rt, ds, rank_by, preset, el2n_models, el2n_steps, seed,
                                 label_noise, noise_seed, el2n_defaults=model is None)
        spec = SubsetSpec(kind=subset, size=size, seed=subset_seed,
                          scores=str(scores) if scores else None, offset=offset,
                          class_balanced=class_balanced)
        indices = make_subset(ds, spec)
        name = subset + (f"_m{size}" if size else "")
    cfg = make_config(preset, dataset, preset.t_star if steps is None else steps, indices, name,
                      seed, label_noise, noise_seed)
    print(run_imp(rt, cfg, ds, indices, levels, replicates))


@app.command()
def scores(kind: str = typer.Argument(..., help="el2n or forgetting"),
           dataset: str = typer.Option("cifar10", envvar="LTHFAST_DATASET", help="dataset"),
           models: int = typer.Option(10, help="K networks, trained packed; scores average over them"),
           steps: Optional[int] = typer.Option(None, help="iterations (default: appendix A per dataset)"),
           label_noise: float = typer.Option(0.0, help="score against labels with this noise fraction"),
           noise_seed: int = typer.Option(0, help="seed of the label noise"),
           model: Optional[str] = typer.Option(None, help="override the network"),
           batch_size: Optional[int] = typer.Option(None, help="override the batch size"),
           lr: Optional[float] = typer.Option(None, help="override the lr"),
           compile: Optional[bool] = typer.Option(None, "--compile/--no-compile"),
           loader: str = LOADER,
           root: Path = ROOT, out: Path = OUT, seed: int = SEED,
           device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
           checkpoint_every: int = CHECKPOINT_EVERY):
    """Per-example scores of the train set (float32 .npy, dataset order); prints its path."""
    import dataclasses

    from .config import Overrides, preset_for
    from .data.streams import check_loader
    from .data.subsets import check_noise_fraction

    from .experiments.scores import check_score_request
    from .models import resolve

    preset = Overrides(model=model, batch_size=batch_size, lr=lr).apply(preset_for(dataset))
    if model is not None:
        preset = dataclasses.replace(preset, el2n_model=model)
    resolve(preset.el2n_model)
    score_kinds().lookup(kind)
    loader_kinds().lookup(loader)
    check_noise_fraction(label_noise)
    check_score_request(models, default_score_steps(kind, preset) if steps is None else steps)
    ds = open_data(root, dataset)
    check_loader(loader, ds, label_noise, deterministic)
    rt = runtime(root, out, device, deterministic, compile, checkpoint_every, loader)
    print(scores_path(rt, ds, kind, preset, models, steps, seed, label_noise, noise_seed,
                      el2n_defaults=True))


@app.command()
def sweep(file: Path = typer.Argument(..., help="sweep file (TOML: command, [flags], [grid])"),
          dry_run: bool = typer.Option(False, help="print the commands, run nothing"),
          root: Path = ROOT, out: Path = OUT,
          device: Optional[str] = DEVICE):
    """Run every grid point of a sweep file in this process; prints the sweep summary path."""
    import contextlib
    import io
    import shlex

    import typer.main

    from .store import atomic_write_json, config_hash
    from .sweep import load_sweep

    commands = typer.main.get_command(app).commands
    options = {name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
               for name, cmd in commands.items()}
    spec = load_sweep(file, options)
    common = {"root": str(root), "out": str(out)} | ({"device": device} if device else {})
    runs = [argv + [w for k, v in common.items() if k not in spec.flags and k not in spec.grid
                    for w in ("--" + k, v)] for argv in spec.runs()]
    if dry_run:
        for argv in runs:
            print("lthfast " + shlex.join(argv))
        return
    records = []
    for i, argv in enumerate(runs, 1):
        print(f"[sweep {i}/{len(runs)}] lthfast {shlex.join(argv)}", file=sys.stderr, flush=True)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                app(argv, standalone_mode=False)
            lines = captured.getvalue().split()
            records.append({"argv": argv, "status": "ok", "artifact": lines[-1] if lines else None})
            print(records[-1]["artifact"])
        except UserError as exc:  # this run's input is bad: say so, go on with the others
            print(f"error: run {i}: {exc}", file=sys.stderr)
            records.append({"argv": argv, "status": "error", "error": str(exc)})
    summary = Path(out) / f"sweep_{config_hash({'runs': runs})}.json"
    atomic_write_json(summary, {"file": str(file), "runs": records})
    failed = sum(r["status"] != "ok" for r in records)
    print(summary)
    if failed:
        raise UserError(f"{failed} of {len(runs)} runs failed (see {summary})")


@app.command()
def report(out: Path = OUT,
           plots: bool = typer.Option(True, "--plots/--no-plots", help="also draw one PNG per dataset")):
    """Collect finished IMP runs into OUT/report/imp.csv (+ plots); prints the CSV path."""
    from .plots import plot_dataset
    from .results import imp_rows, read_csv, write_csv

    rows = imp_rows(out)
    if not rows:
        raise UserError(f"no finished IMP runs under {out}")
    table = write_csv(rows, Path(out) / "report" / "imp.csv")
    if plots:
        rows = read_csv(table)  # plots read the table, nothing else
        for dataset in sorted({r["dataset"] for r in rows}):
            print(plot_dataset(rows, dataset, Path(out) / "report" / f"imp_{dataset}.png"))
    print(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # Usage errors (bad flag, missing argument) arrive here in non-standalone mode. Typer
        # vendors click since 0.2x, so match the interface, not the class.
        if callable(getattr(exc, "format_message", None)) and isinstance(
                getattr(exc, "exit_code", None), int):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
