"""Command line: one small function per command — parse, call the library, print the artifact.

Each command that writes an artifact prints its path as the last line of stdout. User errors
print one line on stderr and exit 2.

    lthfast build-beton digits && lthfast imp --dataset digits --subset random --size 256 --levels 3
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import Interrupted, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="lthfast: lottery tickets on a data diet, fast.")

ROOT = typer.Option(Path("datasets"), "--root", envvar="LTHFAST_DATA", help="data root")
OUT = typer.Option(Path("runs"), "--out", envvar="LTHFAST_RUNS", help="runs root")
SEED = typer.Option(0, "--seed", help="base seed (init, order and augmentation seeds derive from it)")
DEVICE = typer.Option(None, "--device", help="cuda or cpu (default: cuda if available)")
# metavar "": a switch takes no value, so help shows none (typer would print "<bool>")
DETERMINISTIC = typer.Option(False, "--deterministic", metavar="",
                             help="deterministic kernels (CPU: bit-exact reruns)")
CHECKPOINT_EVERY = typer.Option(0, "--checkpoint-every", envvar="LTHFAST_CHECKPOINT_EVERY",
                                help="iterations between checkpoints of a training stage, besides "
                                     "one every 5 minutes of training (0: by time only)")
LOADER = typer.Option("device", "--loader", envvar="LTHFAST_LOADER",
                      help="device (lthfast's device-resident loader) or ffcv (stock ffcv Loaders "
                           "over the betons, for comparison; no label noise, not deterministic)")
COMPILE = typer.Option(None, "--compile/--no-compile", help="torch.compile (default: on for CUDA)")
CUDA_GRAPH = typer.Option(False, "--cuda-graph", metavar="", envvar="LTHFAST_CUDA_GRAPH",
                          help="replay each training step as a CUDA graph (CUDA only; stages "
                               "whose hooks read the step on the host run eagerly)")
LABEL_NOISE = typer.Option(0.0, help="fraction of labels re-drawn (imp: in pre-training only)")
NOISE_SEED = typer.Option(0, help="seed of the label noise")


def runtime(root: Path, out: Path, device: Optional[str], deterministic: bool,
            compile: Optional[bool], checkpoint_every: int, loader: str = "device",
            cuda_graph: bool = False):
    from .api import runtime as make_runtime
    from .progress import make_progress

    return make_runtime(root, out, device, deterministic, compile, checkpoint_every, loader,
                        progress=make_progress(), cuda_graph=cuda_graph)


def request(cls, values: dict):
    """A request of type ``cls`` from a command's parameters (``locals()``): the flags are
    named as the request's fields, so each command only declares its options."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    values = {RENAMED.get(k, k): v for k, v in values.items()}
    return cls(**{k: v for k, v in values.items() if k in names})


RENAMED = {"warmup_steps": "warmup"}  # parameter names that would shadow a command function


def runtime_of(values: dict):
    """The runtime from a training command's parameters (``locals()``)."""
    return runtime(values["root"], values["out"], values["device"], values["deterministic"],
                   values["compile"], values["checkpoint_every"], values["loader"],
                   values["cuda_graph"])


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
           noise_seed: int = NOISE_SEED,
           root: Path = ROOT):
    """Write a subset of train indices as .npy under ROOT/DATASET/subsets and print its path."""
    from .api import open_data
    from .data.subsets import (SUBSET_RULES, SubsetSpec, check_noise_fraction, noisy_labels_path,
                               write_subset)

    SUBSET_RULES.lookup(kind)
    check_noise_fraction(label_noise, noise_seed)
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    spec = SubsetSpec(kind=kind, size=size, seed=seed,
                      scores=str(scores) if scores else None, offset=offset,
                      class_balanced=class_balanced)
    spec.check()  # e.g. --size with all: refused before any data is opened or written
    ds = open_data(root, dataset)
    if label_noise:
        print(noisy_labels_path(ds, label_noise, noise_seed))
    print(write_subset(ds, spec))


# The flags that name a pre-training point: shared by imp and the analyses that spawn from it.
DATASET = typer.Option("cifar10", envvar="LTHFAST_DATASET", help="dataset (preset from Table 1)")
SUBSET = typer.Option("all", help="pre-training subset: all, random, easy, hard")
SIZE = typer.Option(None, help="subset size M")
SUBSET_FILE = typer.Option(None, help="pre-train on these train indices (.npy)")
SUBSET_SEED = typer.Option(0, help="seed of a random subset (replicate r draws its own from it)")
SHARED_SUBSET = typer.Option(False, "--shared-subset", metavar="",
                             help="random: one subset for all replicates")
CLASS_BALANCED = typer.Option(None, "--class-balanced/--no-class-balanced",
                              help="equal share per class (default: yes for random, no for easy/hard)")
OFFSET = typer.Option(0, help="easy/hard: skip this many first")
SCORES = typer.Option(None, help="easy/hard: score file (default: EL2N, computed or reused)")
STEPS = typer.Option(None, help="pre-training iterations t_r (default: t* of the preset)")
REPLICATES = typer.Option(1, help="independent replicates (trained packed)")
RANK_BY = typer.Option("el2n", help="easy/hard without --scores: el2n, forgetting or lmc")
EL2N_MODELS = typer.Option(None, help="networks of the score (default 10; lmc: 2 replicates)")
EL2N_STEPS = typer.Option(None, help="score iterations (lmc: spawn step; default per dataset)")
MODEL = typer.Option(None, help="override the preset's network")
BATCH_SIZE = typer.Option(None, help="override the preset's batch size")
LR = typer.Option(None, help="override the training lr")
PRETRAIN_LR = typer.Option(None, help="override the pre-training lr")
TRAIN_STEPS = typer.Option(None, help="override T, the schedule's iterations")


@app.command()
def imp(dataset: str = DATASET, subset: str = SUBSET, size: Optional[int] = SIZE,
        subset_file: Optional[Path] = SUBSET_FILE, subset_seed: int = SUBSET_SEED,
        shared_subset: bool = SHARED_SUBSET, class_balanced: Optional[bool] = CLASS_BALANCED,
        offset: int = OFFSET, scores: Optional[Path] = SCORES, steps: Optional[int] = STEPS,
        levels: int = typer.Option(12, help="pruning levels (level k keeps 0.8^k of the weights)"),
        replicates: int = REPLICATES, label_noise: float = LABEL_NOISE,
        noise_seed: int = NOISE_SEED, rank_by: str = RANK_BY, el2n_models: Optional[int] = EL2N_MODELS,
        el2n_steps: Optional[int] = EL2N_STEPS, model: Optional[str] = MODEL,
        batch_size: Optional[int] = BATCH_SIZE, lr: Optional[float] = LR,
        pretrain_lr: Optional[float] = PRETRAIN_LR, train_steps: Optional[int] = TRAIN_STEPS,
        compile: Optional[bool] = COMPILE, cuda_graph: bool = CUDA_GRAPH, loader: str = LOADER,
        root: Path = ROOT, out: Path = OUT, seed: int = SEED,
        device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
        checkpoint_every: int = CHECKPOINT_EVERY):
    """IMP with rewinding to t_r after pre-training on a subset; prints the run directory."""
    from . import api

    print(api.imp(request(api.ImpRequest, locals()), runtime_of(locals())).path)


@app.command()
def lmc(dataset: str = DATASET, subset: str = SUBSET, size: Optional[int] = SIZE,
        subset_file: Optional[Path] = SUBSET_FILE, subset_seed: int = SUBSET_SEED,
        shared_subset: bool = SHARED_SUBSET, class_balanced: Optional[bool] = CLASS_BALANCED,
        offset: int = OFFSET, scores: Optional[Path] = SCORES, steps: Optional[int] = STEPS,
        level: Optional[int] = typer.Option(
            None, help="spawn from this IMP level's rewound sparse network (default: w_{t_r})"),
        children: int = typer.Option(2, help="children per replicate; barriers of every pair"),
        alphas: str = typer.Option("0.5", help="interpolation points, e.g. 0.25,0.5,0.75"),
        bn: str = typer.Option("average", help="BatchNorm at interpolated weights: average "
                               "(the authors': statistics interpolated too) or recompute"),
        replicates: int = REPLICATES, label_noise: float = LABEL_NOISE,
        noise_seed: int = NOISE_SEED, rank_by: str = RANK_BY, el2n_models: Optional[int] = EL2N_MODELS,
        el2n_steps: Optional[int] = EL2N_STEPS, model: Optional[str] = MODEL,
        batch_size: Optional[int] = BATCH_SIZE, lr: Optional[float] = LR,
        pretrain_lr: Optional[float] = PRETRAIN_LR, train_steps: Optional[int] = TRAIN_STEPS,
        compile: Optional[bool] = COMPILE, cuda_graph: bool = CUDA_GRAPH, loader: str = LOADER,
        root: Path = ROOT, out: Path = OUT, seed: int = SEED,
        device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
        checkpoint_every: int = CHECKPOINT_EVERY):
    """Linear mode connectivity of children spawned from the pre-training point imp would use
    (or an IMP level); prints the path of the summary JSON (loss_barrier, error_barrier)."""
    from . import api

    print(api.lmc(request(api.LmcRequest, locals()), runtime_of(locals())))


@app.command()
def errors(dataset: str = DATASET, subset: str = SUBSET, size: Optional[int] = SIZE,
           subset_file: Optional[Path] = SUBSET_FILE, subset_seed: int = SUBSET_SEED,
           shared_subset: bool = SHARED_SUBSET, class_balanced: Optional[bool] = CLASS_BALANCED,
           offset: int = OFFSET, scores: Optional[Path] = SCORES, steps: Optional[int] = STEPS,
           level: Optional[int] = typer.Option(
               None, help="sparse projection: this IMP level's mask on w_{t_r} (default: dense)"),
           replicates: int = REPLICATES, label_noise: float = LABEL_NOISE,
           noise_seed: int = NOISE_SEED, rank_by: str = RANK_BY,
           el2n_models: Optional[int] = EL2N_MODELS, el2n_steps: Optional[int] = EL2N_STEPS,
           model: Optional[str] = MODEL, batch_size: Optional[int] = BATCH_SIZE,
           lr: Optional[float] = LR, pretrain_lr: Optional[float] = PRETRAIN_LR,
           train_steps: Optional[int] = TRAIN_STEPS, compile: Optional[bool] = COMPILE, cuda_graph: bool = CUDA_GRAPH,
           loader: str = LOADER, root: Path = ROOT, out: Path = OUT, seed: int = SEED,
           device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
           checkpoint_every: int = CHECKPOINT_EVERY):
    """Per-example errors ‖p − y‖ at the pre-training point imp would use, dense or projected by
    an IMP level's mask (Fig. 9); prints the path of the summary JSON."""
    from . import api

    print(api.errors(request(api.ErrorsRequest, locals()), runtime_of(locals())))


@app.command()
def grads(dataset: str = DATASET, subset: str = SUBSET, size: Optional[int] = SIZE,
          subset_file: Optional[Path] = SUBSET_FILE, subset_seed: int = SUBSET_SEED,
          shared_subset: bool = SHARED_SUBSET, class_balanced: Optional[bool] = CLASS_BALANCED,
          offset: int = OFFSET, scores: Optional[Path] = SCORES, steps: Optional[int] = STEPS,
          coherence_every: int = typer.Option(10, help="steps between coherence measurements"),
          coherence_batches: int = typer.Option(16, help="extra batches per coherence point"),
          eval_every: int = typer.Option(100, help="steps between accuracy points (0: none)"),
          eval_subset: Optional[str] = typer.Option(
              None, help="accuracy also on this subset (Fig. 7a: easy), with --eval-size"),
          eval_size: Optional[int] = typer.Option(None, help="size of --eval-subset"),
          replicates: int = REPLICATES, label_noise: float = LABEL_NOISE,
          noise_seed: int = NOISE_SEED, rank_by: str = RANK_BY,
          el2n_models: Optional[int] = EL2N_MODELS, el2n_steps: Optional[int] = EL2N_STEPS,
          model: Optional[str] = MODEL, batch_size: Optional[int] = BATCH_SIZE,
          lr: Optional[float] = LR, pretrain_lr: Optional[float] = PRETRAIN_LR,
          train_steps: Optional[int] = TRAIN_STEPS, compile: Optional[bool] = COMPILE, cuda_graph: bool = CUDA_GRAPH,
          loader: str = LOADER, root: Path = ROOT, out: Path = OUT, seed: int = SEED,
          device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
          checkpoint_every: int = CHECKPOINT_EVERY):
    """Gradient norms, gradient coherence and learning speed during the pre-training imp would
    run (Figs. 7-8); prints the path of the summary JSON."""
    from . import api

    print(api.grads(request(api.GradsRequest, locals()), runtime_of(locals())))


@app.command()
def warmup(dataset: str = DATASET, subset: str = SUBSET, size: Optional[int] = SIZE,
           subset_file: Optional[Path] = SUBSET_FILE, subset_seed: int = SUBSET_SEED,
           shared_subset: bool = SHARED_SUBSET, class_balanced: Optional[bool] = CLASS_BALANCED,
           offset: int = OFFSET, scores: Optional[Path] = SCORES,
           warmup_steps: int = typer.Option(0, "--warmup", help="t: linear lr warmup iterations, "
                                                                "on the subset"),
           replicates: int = typer.Option(8, help="replicates (trained packed)"),
           rank_by: str = RANK_BY, el2n_models: Optional[int] = EL2N_MODELS,
           el2n_steps: Optional[int] = EL2N_STEPS, batch_size: Optional[int] = BATCH_SIZE,
           lr: Optional[float] = typer.Option(None, help="override the peak lr (3.2)"),
           train_steps: Optional[int] = TRAIN_STEPS, compile: Optional[bool] = COMPILE, cuda_graph: bool = CUDA_GRAPH,
           loader: str = LOADER, root: Path = ROOT, out: Path = OUT, seed: int = SEED,
           device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
           checkpoint_every: int = CHECKPOINT_EVERY):
    """Learning-rate warmup (appendix A, Fig. 6): the subset during the warmup only, then all
    data; prints the run directory (diverged replicates are results, not errors)."""
    from . import api

    print(api.warmup(request(api.WarmupRequest, locals()), runtime_of(locals())))


@app.command()
def scores(kind: str = typer.Argument(..., help="el2n, forgetting or lmc"),
           dataset: str = typer.Option("cifar10", envvar="LTHFAST_DATASET", help="dataset"),
           models: Optional[int] = typer.Option(
               None, help="K networks, trained packed, scores average over them (default 10; "
                          "lmc: replicates of the parent, default 2)"),
           steps: Optional[int] = typer.Option(
               None, help="iterations (default: appendix A per dataset; lmc: spawn step, t*)"),
           children: int = typer.Option(3, help="lmc: children per replicate (pairs of them)"),
           bn: str = typer.Option("average", help="lmc: BatchNorm at interpolated weights "
                                  "(average or recompute)"),
           train_steps: Optional[int] = TRAIN_STEPS, pretrain_lr: Optional[float] = PRETRAIN_LR,
           label_noise: float = LABEL_NOISE, noise_seed: int = NOISE_SEED,
           model: Optional[str] = typer.Option(None, help="override the network"),
           batch_size: Optional[int] = typer.Option(None, help="override the batch size"),
           lr: Optional[float] = typer.Option(None, help="override the lr"),
           compile: Optional[bool] = COMPILE, cuda_graph: bool = CUDA_GRAPH, loader: str = LOADER,
           root: Path = ROOT, out: Path = OUT, seed: int = SEED,
           device: Optional[str] = DEVICE, deterministic: bool = DETERMINISTIC,
           checkpoint_every: int = CHECKPOINT_EVERY):
    """Per-example scores of the train set (float32 .npy, dataset order); prints its path."""
    from . import api

    print(api.scores(request(api.ScoreRequest, locals()), runtime_of(locals())))


@app.command()
def sweep(file: Path = typer.Argument(..., help="sweep file (TOML: command, \\[flags], \\[grid])"),
          dry_run: bool = typer.Option(False, "--dry-run", metavar="",
                                       help="print the commands, run nothing"),
          launcher: str = typer.Option("inprocess", help="inprocess (default), local (submitit "
                                                         "jobs here) or slurm (a job array)"),
          partition: Optional[str] = typer.Option(None, help="slurm: the partition"),
          time_min: int = typer.Option(240, help="local/slurm: time limit per job, minutes"),
          gpus_per_task: int = typer.Option(0, help="slurm: GPUs per job"),
          cpus_per_task: int = typer.Option(2, help="local/slurm: CPUs per job"),
          array_parallelism: int = typer.Option(16, help="slurm: jobs of the array at once"),
          wait: bool = typer.Option(False, "--wait", metavar="",
                                    help="slurm: wait for the array and collect its results"),
          smoke: bool = typer.Option(False, "--smoke", metavar="",
                                     help="the same grid at smoke scale: digits, tiny steps, "
                                          "sizes and ensembles (minutes on a CPU)"),
          workers: int = typer.Option(0, help="inprocess: worker processes, one per device "
                                              "(0: one per GPU where there are several)"),
          pack: bool = typer.Option(False, "--pack", metavar="",
                                    help="imp sweeps, in this process: train compatible runs "
                                         "packed across grid points (same results)"),
          root: Path = ROOT, out: Path = OUT, device: Optional[str] = DEVICE):
    """Run every grid point of a sweep file (in this process, one worker per GPU, or as
    submitit jobs); prints progress with ETA on stderr, each artifact and, last, the sweep
    summary path."""
    from .launch import LAUNCHERS, LaunchOptions
    from .smoke import smoke_sweep
    from .sweep import load_sweep

    launch = LAUNCHERS.lookup(launcher)
    options = LaunchOptions(partition, time_min, gpus_per_task, cpus_per_task,
                            array_parallelism, wait, workers=workers, pack=pack)
    options.check()
    for flag, value in (("--workers", workers), ("--pack", pack)):
        if value and launcher != "inprocess":
            raise UserError(f"{flag} is for the in-process launcher, not --launcher {launcher}")
    if pack and workers:
        raise UserError("--pack trains in this process: it cannot take --workers")
    spec = smoke_sweep(load_sweep(file)) if smoke else load_sweep(file)
    if dry_run:
        for line in spec.command_lines(root, out, device):
            print(line)
        return
    launch(spec, runtime(root, out, device, False, None, 0), options)  # prints what it writes


@app.command()
def demo(root: Path = ROOT, out: Path = OUT, device: Optional[str] = DEVICE):
    """The paper's Figure 2 in small on the embedded digits set (a few minutes on a CPU):
    prints a plain-words summary, then the table's path."""
    from .demo import run_demo

    rt = runtime(root, out, device, False, None, 0)
    print(run_demo(rt, progress=lambda text: print(text, flush=True)))


@app.command()
def predict(file: Path = typer.Argument(..., help="an imp sweep file: its grid points are the "
                                                  "candidate pre-training schemes"),
            children: int = typer.Option(2, help="dense children per replicate"),
            replicates: int = typer.Option(2, help="replicates per scheme"),
            level: int = typer.Option(12, help="IMP level to compare with, where IMP ran"),
            root: Path = ROOT, out: Path = OUT, device: Optional[str] = DEVICE):
    """Rank pre-training schemes by the barrier of dense children (Fig. 5's predictor), with
    the cost saved against IMP; prints the ranking, then the JSON's path."""
    from .predict import predict as rank_schemes
    from .sweep import load_sweep

    spec = load_sweep(file)
    if spec.command != "imp":
        raise UserError(f"{file}: predict takes an imp sweep file (its grid points are the "
                        f"schemes), not {spec.command}")
    if children < 2 or replicates < 1:
        raise UserError("--children must be >= 2 and --replicates >= 1")
    rt = runtime(root, out, device, False, None, 200)
    print(rank_schemes(list(spec.points()), rt, children, replicates, level,
                       progress=lambda text: print(text, file=sys.stderr, flush=True)))


@app.command()
def report(out: Path = OUT,
           plots: bool = typer.Option(True, "--plots/--no-plots", help="also draw one PNG per dataset")):
    """Collect runs into tables under OUT/report, one per kind of result (imp.csv; lmc.csv,
    lmc_onset.csv and schemes.csv, warmup.csv, analyses.csv when there are such runs) and
    plots; prints the paths, imp.csv last."""
    from .plots import plot_dataset
    from .results import (ANALYSIS_COLUMNS, LMC_COLUMNS, ONSET_COLUMNS, SCHEME_COLUMNS,
                          WARMUP_COLUMNS, analysis_rows, imp_rows, lmc_rows, onset_rows,
                          read_csv, scheme_rows, warmup_rows, write_csv)

    rows, lmc, warm, other = imp_rows(out), lmc_rows(out), warmup_rows(out), analysis_rows(out)
    if not (rows or lmc or warm or other):
        raise UserError(f"no finished IMP, LMC, warmup or analysis runs under {out}")
    report_dir = Path(out) / "report"
    if warm:
        print(write_csv(warm, report_dir / "warmup.csv", WARMUP_COLUMNS))
    if other:
        print(write_csv(other, report_dir / "analyses.csv", ANALYSIS_COLUMNS))
    if lmc:
        print(write_csv(lmc, report_dir / "lmc.csv", LMC_COLUMNS))
        print(write_csv(onset_rows(lmc), report_dir / "lmc_onset.csv", ONSET_COLUMNS))
        if rows:
            print(write_csv(scheme_rows(rows, lmc), report_dir / "schemes.csv", SCHEME_COLUMNS))
    if not rows:
        return
    table = write_csv(rows, report_dir / "imp.csv")
    if plots:
        rows = read_csv(table)  # plots read the table, nothing else
        for dataset in sorted({r["dataset"] for r in rows}):
            print(plot_dataset(rows, dataset, report_dir / f"imp_{dataset}.png"))
    print(table)


@app.command()
def plot(figure: str = typer.Argument(..., help="sparsity, size, onset, barriers, warmup, grads "
                                                "or errors"),
         out: Path = OUT):
    """Draw one kind of the paper's figures from OUT/report tables (run 'lthfast report'
    first); prints the PNG and PDF paths."""
    from .figures import plot as draw

    for path in draw(figure, Path(out) / "report"):
        print(path)


def _interrupt(signum, _frame):
    raise Interrupted(signum)


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app(standalone_mode=False)
    except UserError as exc:
        # one line, always: messages that quote a library's multi-line error are joined
        lines = (re.sub(r"^\s*-\s+", "", line).strip() for line in str(exc).splitlines())
        print("error: " + "; ".join(line for line in lines if line), file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + exc.signum)
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
