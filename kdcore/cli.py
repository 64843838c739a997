"""The ``kdcore`` command line. Bad input ends in one line per problem on stderr and a non-zero
exit code; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

import kdcore
from kdcore.api import SPEC_TYPES
from kdcore.errors import KdcoreError, first_line

console = Console()
errors = Console(stderr=True, highlight=False)

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130

recipe_argument = click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set teacher.epochs=10 (repeatable).",
)


@click.group()
@click.version_option(kdcore.__version__, prog_name="kdcore")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def cli(debug: bool) -> None:
    """Knowledge distillation with teachers that estimate the Bayes class probabilities."""


@cli.command()
@recipe_argument
@set_option
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check a recipe against the installed plugins without running it."""
    from kdcore.config.loader import load_variants
    from kdcore.registry import load_registry

    _, variants = load_variants(recipe, list(overrides), load_registry())
    console.print(f"[green]ok[/]: {escape(str(recipe))} ({len(variants)} run{'s' if len(variants) > 1 else ''})")


@cli.command()
@recipe_argument
@set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Directory under which runs are created.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Use exactly this run directory (new, or with --resume an existing one).")
@click.option("--resume", is_flag=True, help="Continue the latest run of this recipe (or --run-dir).")
@click.option("--teachers", type=click.Path(file_okay=False, path_type=Path),
              help="Store of shared trained teachers (default: OUT/teachers, or beside --run-dir).")
@click.option("--dry-run", is_flag=True, help="Validate and list the runs without training.")
@click.option("--quiet", is_flag=True, help="No progress: only the final one-line result, and errors.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per event on stdout (stage_start, steps, epoch, stage_end, run_done, report); "
                   "messages on stderr.")
@click.option("--shard", metavar="I/N", help="Train shard I of N of the matrix (numbered from 0, as SLURM_ARRAY_TASK_ID); "
              "shards that run at once share --run-dir and the teacher store.")
@click.option("--launcher", type=click.Choice(["slurm"]), help="Submit the sweep's shards as one SLURM array "
              "(submitit); settings as --set launcher.partition=... (see the README).")
def run(recipe: Path, overrides: tuple[str, ...], out: Path, run_dir: Path | None, resume: bool,
        teachers: Path | None, dry_run: bool, quiet: bool = False, as_json: bool = False,
        shard: str | None = None, launcher: str | None = None) -> None:
    """Train the teacher and distil the student(s) of RECIPE."""
    console = _run_console(quiet, as_json)  # the progress display follows it (kdcore.runs.progress)
    from kdcore.config.loader import load_variants
    from kdcore.registry import load_registry
    from kdcore.runs.launch import peel_launcher
    from kdcore.runs.layout import teacher_store_default
    from kdcore.runs.shards import parse_shard, select

    recipe_overrides, launcher_settings = peel_launcher(overrides)
    overrides = tuple(recipe_overrides)
    if launcher_settings and launcher is None:
        raise KdcoreError("--set launcher.*: launcher settings need --launcher slurm")
    part = parse_shard(shard) if shard is not None else None
    if part is not None and launcher is not None:
        raise KdcoreError("--shard and --launcher: give one of them (the launcher starts every shard)")
    if part is not None and run_dir is None:
        raise KdcoreError("--shard: give --run-dir DIR, the run directory that every shard shares")
    registry = load_registry()
    raw, variants = load_variants(recipe, list(overrides), registry)
    selected = select(variants, part, registry) if part is not None else variants
    if dry_run:
        for variant in selected:
            console.print(escape(f"would run: {variant.recipe.name} {variant.id or '(single run)'}"))
        return
    if launcher is not None:
        from kdcore.runs.launch import launch

        launch(recipe, list(overrides), launcher_settings, raw, variants, registry, out, run_dir, teachers, console)
        return
    if part is not None and not selected:
        console.print(escape(f"shard {part}: no runs (the matrix has {len(variants)})"))
        return
    from kdcore.engine import distributed
    from kdcore.engine.accelerator import resolve_device
    from kdcore.runs import sweep
    from kdcore.runs.environment import write_environment
    from kdcore.runs.layout import RunLock, remove_stale_temporaries, trained_anything, update_status

    for device in dict.fromkeys(v.recipe.runtime.device for v in variants):
        resolve_device(device)  # a missing GPU is refused before any folder is made
    first = variants[0].recipe
    sweep.check_folder_names(run_dir or out / first.name / "run", variants)
    distributed.start()
    lock = None
    try:
        if part is not None:  # a shared run directory: its own runs only, no sweep-level files twice
            from kdcore.runs.shards import report_hint, shared_directory

            directory = shared_directory(run_dir)
        else:
            directory = _shared_run_directory(out, run_dir, first.name, resume)
        store = teachers or teacher_store_default(out, run_dir)
        again = sweep.resume_command(recipe, overrides, directory, teachers)
        if part is not None:
            again += f" --shard {part}"
        main_process = distributed.is_main()
        if main_process:
            if part is None or any(not v.id for v in selected):
                lock = RunLock(directory).acquire()  # held while this process trains here
            if part is None:
                remove_stale_temporaries(directory, recursive=True)
            else:  # other shards (other machines: other pids) write beside this one
                for variant in selected:
                    remove_stale_temporaries(directory / variant.id, recursive=True)
        try:
            if main_process:
                sweep.prepare(directory, raw, variants, resume, only=selected if part is not None else None)
                if part is None:
                    update_status(directory, status="running", pid=os.getpid())
                    write_environment(directory, first.runtime.device, first.seed, registry)
                else:
                    write_environment(directory, first.runtime.device, first.seed, registry, name=part.environment_file)
                console.print(escape(f"run directory: {directory}"))
                if part is not None:
                    console.print(escape(f"shard {part}: {len(selected)} of {len(variants)} runs"))
            distributed.barrier()
            sweep.execute(directory, selected, registry, first.runtime.jobs, console, store, retry=again)
        except KeyboardInterrupt:
            if main_process and part is None and (directory / "recipe.yaml").exists():
                update_status(directory, status="interrupted", trained=trained_anything(directory))
            saved = sweep.saved_progress(directory, selected, registry, store)
            raise RunInterrupted(f"interrupted: saved {saved}; resume with: {again}") from None
        except BaseException as error:
            if main_process and part is None and (directory / "recipe.yaml").exists() and not _refused(error):
                update_status(directory, status="failed", trained=trained_anything(directory),
                              error=first_line(error))
            raise
        if main_process and part is not None:
            console.print(escape(f"shard {part} finished; {report_hint(directory)}"), soft_wrap=True)
        elif main_process:
            update_status(directory, status="finished", trained=True)
            _write_report(directory, [directory], output=console)
    finally:
        if lock is not None:
            lock.release()
        distributed.stop()


class RunInterrupted(Exception):
    """Ctrl-C during ``kdcore run``: the message says what was saved and how to resume."""


def _refused(error: BaseException) -> bool:
    """A resume refused before anything ran (a changed recipe): the run itself did not fail."""
    return isinstance(error, KdcoreError) and "differs from the one this run started with" in str(error)


def _run_console(quiet: bool, as_json: bool) -> Console:
    """``kdcore run``'s console: the terminal's (bars in a terminal, plain lines in a log), a
    quiet one for ``--quiet``, one that writes JSON events to stdout for ``--json``."""
    from kdcore.runs.progress import EventConsole

    if quiet and as_json:
        raise KdcoreError("--quiet and --json: give one of them")
    if as_json:
        return EventConsole(highlight=False)
    return Console(quiet=True) if quiet else console


def _shared_run_directory(out: Path, run_dir: Path | None, name: str, resume: bool) -> Path:
    """Rank 0 picks (or creates) the run directory and every process uses it; a problem is
    raised on every process."""
    from kdcore.engine import distributed

    chosen: Path | str
    try:
        chosen = _run_directory(out, run_dir, name, resume) if distributed.is_main() else ""
    except KdcoreError as error:
        chosen = f"error: {error}"
    chosen = distributed.broadcast(chosen)
    if isinstance(chosen, str):
        raise KdcoreError(chosen.removeprefix("error: "))
    return chosen


def _run_directory(out: Path, run_dir: Path | None, name: str, resume: bool) -> Path:
    from kdcore.runs.layout import (
        LOCK, RECIPE, STATUS, check_name_length, latest_run_directory, mark_created, new_run_directory,
    )

    if run_dir is None:
        return latest_run_directory(out, name) if resume else new_run_directory(out, name)
    if resume:
        if not (run_dir / RECIPE).exists():
            raise KdcoreError(f"--run-dir {run_dir}: no run to resume there (no {RECIPE}); start it without --resume")
        return run_dir
    if run_dir.exists() and any(p.name not in (LOCK, STATUS) for p in run_dir.iterdir()):  # ours only: empty
        raise KdcoreError(f"--run-dir {run_dir}: directory is not empty; add --resume to continue it, or pick a new one")
    check_name_length(run_dir, run_dir.name, "--run-dir", "pick a shorter folder name")
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_created(run_dir)
    return run_dir


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--kind", type=click.Choice(list(SPEC_TYPES)), help="Only components of this kind.")
@click.option("--params", "params_of", metavar="NAME", help="Show a component's parameters.")
def plugins(as_json: bool, kind: str | None, params_of: str | None) -> None:
    """List installed plugins and their components."""
    from kdcore.listing import find_component, print_inventory, print_params
    from kdcore.registry import load_registry

    registry = load_registry()
    if params_of:
        print_params(console, find_component(registry, params_of, kind), as_json)
    else:
        print_inventory(console, registry, kind, as_json)


@cli.command(name="export")
@click.argument("source", metavar="RUN_DIR", type=click.Path(exists=True, path_type=Path))
@click.option("--stage", type=click.Choice(["student", "teacher"]), default="student", show_default=True,
              help="Which network of the run.")
@click.option("--weights", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="The last epoch's weights, or those of the best validation epoch.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "safetensors"]), required=True,
              help="onnx and torchscript: for inference without kdcore; safetensors: the weights with metadata.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The file to write.")
def export_command(source: Path, stage: str, weights: str, fmt: str, out: Path) -> None:
    """Write a trained network of RUN_DIR (or a weights file) as ONNX, TorchScript or safetensors."""
    from kdcore.export import export
    from kdcore.registry import load_registry

    console.print(escape(export(source, fmt, out, stage=stage, weights=weights, registry=load_registry()).describe()),
                  soft_wrap=True)


@cli.command(name="teachers")
@click.argument("store", required=False, type=click.Path(file_okay=False, path_type=Path),
                default=Path("runs/teachers"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every field of teacher.json).")
def teachers_command(store: Path, as_json: bool) -> None:
    """List the trained teachers in STORE (default runs/teachers): identity, objective and options,
    seed, data, epochs, held-out top-1/Brier/NLL/ECE, size on disk."""
    from kdcore.runs.teachers import print_teachers, stored_teachers

    print_teachers(console, stored_teachers(store), as_json)


@cli.command(name="status")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(run_dir: Path, as_json: bool) -> None:
    """Which runs of RUN_DIR are done, running, failed or pending (also while its shards train)."""
    from kdcore.runs.status import print_status

    print_status(console, run_dir, as_json)


@cli.command(name="report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the report (default: the first RUN_DIR).")
@click.option("--compare", metavar="FIELD", help="The recipe field whose values are compared, paired by seed "
              "(default: teacher.objective.name), e.g. student.distillers.0.name.")
@click.option("--baseline", metavar="VALUE", help="The value the others are compared to (default: the first value "
              "of the field's matrix axis).")
@click.option("--curve", metavar="FIELD", help="Draw student accuracy over this numeric recipe field "
              "(default: a numeric data field that varies, such as a label budget).")
@click.option("--wide", is_flag=True, help="Every column and full labels, however wide the terminal.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the tables.")
def report_command(run_dirs: tuple[Path, ...], out: Path | None, compare: str | None = None,
                   baseline: str | None = None, curve: str | None = None, wide: bool = False,
                   as_json: bool = False) -> None:
    """Aggregate finished runs into tables (mean ± std over seeds, paired differences by seed) and plots."""
    for run_dir in run_dirs:  # read only what exists: never create the folder asked to be read
        if run_dir.is_file():
            raise KdcoreError(f"{run_dir}: is a file, not a run directory; give the folder that holds it "
                              f"({run_dir.parent})")
        if not run_dir.is_dir():
            raise KdcoreError(f"{run_dir}: no such run directory; give a folder that kdcore run wrote")
    target = out or run_dirs[0]
    target.mkdir(parents=True, exist_ok=True)
    _write_report(target, list(run_dirs), compare=compare, baseline=baseline, curve=curve, wide=wide,
                  as_json=as_json)


def _write_report(target: Path, run_dirs: list[Path], output: Console | None = None, compare: str | None = None,
                  baseline: str | None = None, curve: str | None = None, wide: bool = False,
                  as_json: bool = False) -> None:
    """Write the report of ``run_dirs`` into ``target`` and show its summary: the tables fitted
    to the terminal (all columns with ``wide``), report.json (``as_json``), one line (a quiet
    ``output``), or a ``report`` event (an event console)."""
    from kdcore.results.collect import collect
    from kdcore.results.report import REPORT_JSON, build_report
    from kdcore.results.terminal import one_line, print_summary
    from kdcore.runs.progress import EventConsole

    output = output or console
    report = build_report(target, collect(run_dirs), compare, baseline, curve)
    names = ", ".join(p.name for p in report.written)
    if as_json:
        sys.stdout.write((target / REPORT_JSON).read_text())
    elif isinstance(output, EventConsole):
        output.event("report", directory=str(target), files=[str(p) for p in report.written], result=one_line(report))
    elif output.quiet:
        console.print(escape(one_line(report)), soft_wrap=True)
    else:
        print_summary(output, report, wide)
        output.print(escape(f"wrote {names} in {target}"))


def _exit_code(error: KdcoreError) -> int:
    """2 for bad input; 1 for a run that failed (a diverged loss, a sweep whose runs failed)."""
    from kdcore.errors import NonFiniteLossError

    if isinstance(error, NonFiniteLossError):
        return EXIT_INTERNAL_ERROR
    return getattr(error, "exit_code", EXIT_USER_ERROR)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except RunInterrupted as error:
        errors.print(escape(str(error)), soft_wrap=True)
        sys.exit(EXIT_INTERRUPTED)
    except KdcoreError as error:
        if debug:
            raise
        for line in str(error).splitlines():
            errors.print(f"[red]error[/]: {escape(line)}", soft_wrap=True)
        sys.exit(_exit_code(error))
    except (click.exceptions.Abort, KeyboardInterrupt):
        errors.print("interrupted before any run started; nothing was saved")
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:
        context = getattr(error, "ctx", None)
        hint = f"; see '{context.command_path} --help'" if context is not None else ""
        errors.print(f"[red]error[/]: {escape(error.format_message().rstrip('.'))}{escape(hint)}", soft_wrap=True)
        sys.exit(error.exit_code)
    except OSError as error:
        if debug:
            raise
        from kdcore.runs.layout import describe_os_error

        line, failed_run = describe_os_error(error)
        errors.print(f"[red]error[/]: {escape(line)}", soft_wrap=True)
        sys.exit(EXIT_INTERNAL_ERROR if failed_run else EXIT_USER_ERROR)
    except Exception as error:
        if debug:
            raise
        errors.print(f"[red]error[/]: {escape(f'{type(error).__name__}: {error}')} (rerun with --debug for the traceback)",
                     soft_wrap=True)
        sys.exit(EXIT_INTERNAL_ERROR)
if __name__ == "__main__":
    main()
