"""Command line: parse, call the library, print the artifact.

The training commands (imp, scores, lmc, errors, grads, warmup) are not written here: one
builder, ``training_command``, makes each from the command table (``api.COMMANDS``: its request
class and runner) and the runtime's flags, a typer signature built from their fields' metadata
(``lthfast.options``), so a new flag is one field and a new analysis one request and one
registered runner. Each command
that writes an artifact prints its path as the last line of stdout. User errors print one line
on stderr and exit 2.

    lthfast build-beton digits && lthfast imp --dataset digits --subset random --size 256 --levels 3
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from typer.models import ArgumentInfo

from .errors import Interrupted, UserError
from .api import COMMANDS
from .options import Option, aliases, opts

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_enable=False,
                  help="lthfast: lottery tickets on a data diet, fast.")

def parameter(option: Option, hidden: bool = False) -> inspect.Parameter:
    """One option (or the positional argument) of a command, from a field's ``Opt``."""
    o = option.opt
    if o.argument:
        info = typer.Argument(..., help=o.help, show_default=False, metavar=option.name.upper())
    else:
        switch = option.base is bool
        decls = [f"{option.flag}/--no-{option.flag[2:]}"] if o.negatable else [option.flag]
        # metavar "": a switch takes no value, so help shows none (typer would print "<bool>")
        info = typer.Option(None if hidden else option.default, *decls, help=o.help,
                            envvar=None if hidden else o.env, rich_help_panel=o.panel,
                            hidden=hidden,
                            metavar="" if switch and not o.negatable else None,
                            show_default=not switch and option.default is not None)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=Optional[option.base] if hidden else option.hint)


def alias_parameters(options: list[Option]) -> list[inspect.Parameter]:
    """Hidden options under each flag's old names (``Opt.aliases``): old scripts keep working."""
    return [parameter(dataclasses.replace(o, name=old), hidden=True)
            for o in options for old in o.opt.aliases]


def runtime_options(*names: str) -> list[Option]:
    from .runtime import options

    return [o for o in options() if not names or o.name in names]


def make_runtime(values: dict):
    from .progress import make_progress
    from .runtime import runtime

    return runtime(progress=make_progress(), **values)


def request(cls: type, values: dict) -> Any:
    """The request from a command's parameters: its fields (an old name's value, given, for
    its field; both names given is an error); the runtime's and anything else left out."""
    fields = {o.name: o for o in opts(cls)}
    given = {k: v for k, v in values.items() if k in fields}
    for old, name in aliases(cls).items():
        if values.get(old) is None:
            continue
        if given[name] != fields[name].default:
            raise UserError(f"{fields[name].flag} given twice (once by its old name "
                            f"--{old.replace('_', '-')})")
        given[name] = values[old]
    return cls(**given)


def training_command(command: str, cls: type, extra=(), before=None) -> None:
    """``lthfast COMMAND``, its options made from the request class and the runtime's flags
    (one function signature built from their fields, which typer reads like any other).
    ``extra`` parameters are not the request's; ``before(values)`` may handle the call itself
    (returns True), e.g. ``scores compare``."""
    fields, runtime = opts(cls), runtime_options()

    def main(**values):
        if before is not None and before(values):
            return
        flags = {o.name: values[o.name] for o in runtime}
        print(COMMANDS[command](request(cls, values), make_runtime(flags)))

    params = [parameter(o) for o in fields + runtime] + alias_parameters(fields) + list(extra)
    argument_first = sorted(params, key=lambda p: not isinstance(p.default, ArgumentInfo))
    main.__signature__ = inspect.Signature(argument_first)
    main.__doc__ = cls.__doc__
    app.command(command)(main)


def option(name: str) -> Any:
    """A runtime flag's typer option for a hand-written command (root, out, device)."""
    return parameter(runtime_options(name)[0]).default


ROOT, OUT, DEVICE, THREADS = option("root"), option("out"), option("device"), option("threads")


@app.command("build-beton")
def build_beton(name: str = typer.Argument(..., help="cifar10, cifar100, cinic10, digits, "
                                                     "synthetic"),
                source: Optional[str] = typer.Option(None, help="local archive/folder "
                                                                "(synthetic: key=value options)"),
                root: Path = ROOT,
                force: bool = typer.Option(False, help="rebuild even if already built")):
    """Convert a dataset once into arrays, FFCV betons and meta.json under ROOT/NAME."""
    from .data.build import build_dataset

    print(build_dataset(name, root, source=source, force=force))


@app.command()
def subset(kind: str = typer.Argument(..., help="all, random, easy, hard or ccs"),
           dataset: str = typer.Option(..., help="dataset name"),
           size: Optional[int] = typer.Option(None, help="number of examples M"),
           subset_seed: int = typer.Option(0, help="seed of a random subset"),
           seed: Optional[int] = typer.Option(None, hidden=True),  # --subset-seed's old name
           scores: Optional[Path] = typer.Option(None, help="easy/hard: score file (.npy)"),
           offset: int = typer.Option(0, help="skip this many of the easiest/hardest first"),
           class_balanced: Optional[bool] = typer.Option(
               None, "--class-balanced/--no-class-balanced",
               help="default: yes for random, no for easy/hard"),
           label_noise: float = typer.Option(0.0, help="also save labels with this fraction "
                                                       "re-drawn"),
           noise_seed: int = typer.Option(0, help="seed of the label noise"),
           root: Path = ROOT):
    """Write a subset of train indices as .npy under ROOT/DATASET/subsets and print its path."""
    from .api import open_data
    from .data.subsets import (SUBSET_RULES, SubsetSpec, check_noise_fraction, noisy_labels_path,
                               write_subset)

    SUBSET_RULES.lookup(kind)
    check_noise_fraction(label_noise, noise_seed)
    if seed is not None and subset_seed != 0:
        raise UserError("--subset-seed given twice (once by its old name --seed)")
    seed = subset_seed if seed is None else seed
    if seed < 0:
        raise UserError(f"--subset-seed must be >= 0, got {seed}")
    spec = SubsetSpec(kind=kind, size=size, seed=seed,
                      scores=str(scores) if scores else None, offset=offset,
                      class_balanced=class_balanced)
    spec.check()  # e.g. --size with all: refused before any data is opened or written
    ds = open_data(root, dataset)
    if label_noise:
        print(noisy_labels_path(ds, label_noise, noise_seed))
    print(write_subset(ds, spec))


def compare_scores(values: dict) -> bool:
    """``lthfast scores compare``: not a score but the dataset's computed ones, compared
    (Spearman correlations as CSV and heat map; ``--x``/``--y``: a scatter of two)."""
    if values["kind"] != "compare":
        if values["x"] is not None or values["y"] is not None:
            raise UserError("--x and --y are for 'lthfast scores compare'")
        return False
    from .experiments.score_compare import compare

    for path in compare(values["out"], values["dataset"], values["x"], values["y"],
                        root=values["root"]):
        print(path)
    return True


def _compare_axis(name: str, help: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                             default=typer.Option(None, f"--{name}", help=help,
                                                  rich_help_panel="scores compare"))


for _name, _command in COMMANDS.items():
    if _name == "scores":
        training_command(_name, _command.request, before=compare_scores, extra=[
            _compare_axis("x", "compare: scatter this score ..."),
            _compare_axis("y", "compare: ... against this one")])
    else:
        training_command(_name, _command.request)


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
                                    help="slurm: wait for the array and collect its results "
                                         "(without: rerun the same command to collect)"),
          smoke: bool = typer.Option(False, "--smoke", metavar="",
                                     help="the same grid at smoke scale: digits, tiny steps, "
                                          "sizes and ensembles (minutes on a CPU)"),
          workers: int = typer.Option(0, help="inprocess: worker processes, one per device "
                                              "(0: one per GPU where there are several)"),
          pack: bool = typer.Option(False, "--pack", metavar="",
                                    help="imp sweeps, in this process: train compatible runs "
                                         "packed across grid points (same results)"),
          root: Path = ROOT, out: Path = OUT, device: Optional[str] = DEVICE,
          threads: Optional[int] = THREADS):
    """Run every grid point of a sweep file (in this process, one worker per GPU, or as
    submitit jobs); prints progress with ETA on stderr, each artifact and, last, the sweep
    summary path."""
    from .sweep.launch import LAUNCHERS, LaunchOptions
    from .sweep.smoke import smoke_sweep
    from .sweep.spec import load_sweep

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
    # prints what it writes
    launch(spec, make_runtime(dict(root=root, out=out, device=device, threads=threads)), options)


@app.command()
def demo(root: Path = ROOT, out: Path = OUT, device: Optional[str] = DEVICE,
         seed: int = typer.Option(0, "--seed", help="another seed: an independent demo"),
         threads: Optional[int] = THREADS):
    """What a CPU can show of the paper on the embedded digits set (minutes): instability at
    initialisation, noisy labels ranked hard, IMP after pre-training on easy / random / all
    data. Prints the summary in words, then its path (beside summary.json and demo.png)."""
    from .demo import run_demo

    rt = make_runtime(dict(root=root, out=out, device=device, threads=threads))
    print(run_demo(rt, seed, progress=lambda text: print(text, flush=True)))


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
    from .sweep.spec import load_sweep

    spec = load_sweep(file)
    if spec.command != "imp":
        raise UserError(f"{file}: predict takes an imp sweep file (its grid points are the "
                        f"schemes), not {spec.command}")
    if children < 2 or replicates < 1:
        raise UserError("--children must be >= 2 and --replicates >= 1")
    rt = make_runtime(dict(root=root, out=out, device=device, checkpoint_every=200))
    print(rank_schemes(list(spec.points()), rt, children, replicates, level,
                       progress=lambda text: print(text, file=sys.stderr, flush=True)))


@app.command()
def report(out: Path = OUT,
           plots: bool = typer.Option(True, "--plots/--no-plots",
                                      help="also draw accuracy vs sparsity per comparison")):
    """Collect runs into tables under OUT/report, one per kind of result (imp.csv, lmc.csv, ...;
    see lthfast.report) and plots; names damaged files on stderr; prints the paths, imp.csv
    last."""
    from .report import report as make_report

    done = make_report(out, plots)
    for line in done.damaged:
        print(f"warning: {line}", file=sys.stderr)
    for path in done.written:
        print(path)


@app.command()
def plot(figure: Optional[str] = typer.Argument(
             None, help="a figure kind (best, sparsity, size, ...) or the paper's name (fig1 "
                        "... fig15)"),
         out: Path = OUT,
         list_: bool = typer.Option(False, "--list", metavar="",
                                    help="print the paper's figures and what draws them")):
    """Draw the paper's figures from OUT/report tables (run 'lthfast report' first); prints
    the PNG and PDF paths."""
    from .figures import figure_map, plot as draw

    if list_:
        print(figure_map())
        return
    if figure is None:
        raise UserError("name a figure (e.g. 'lthfast plot fig2'; 'lthfast plot --list' shows "
                        "them all)")
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
