"""The ``kdcore`` command line. Bad input ends in one line per problem on stderr and a non-zero
exit code; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

import kdcore
from kdcore.api import SPEC_TYPES
from kdcore.errors import KdcoreError

console = Console()
errors = Console(stderr=True, highlight=False)

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130
CONSOLE_COLUMNS = 4

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
def run(recipe: Path, overrides: tuple[str, ...], out: Path, run_dir: Path | None, resume: bool,
        teachers: Path | None, dry_run: bool) -> None:
    """Train the teacher and distil the student(s) of RECIPE."""
    from kdcore.config.loader import load_variants
    from kdcore.registry import load_registry
    from kdcore.runs.layout import teacher_store_default

    registry = load_registry()
    raw, variants = load_variants(recipe, list(overrides), registry)
    if dry_run:
        for variant in variants:
            console.print(escape(f"would run: {variant.recipe.name} {variant.id or '(single run)'}"))
        return
    from kdcore.engine import distributed
    from kdcore.runs import sweep
    from kdcore.runs.environment import write_environment

    distributed.start()
    try:
        first = variants[0].recipe
        directory = _shared_run_directory(out, run_dir, first.name, resume)
        if distributed.is_main():
            sweep.prepare(directory, raw, variants, resume)
            write_environment(directory, first.runtime.device, first.seed, registry)
            console.print(escape(f"run directory: {directory}"))
        distributed.barrier()
        store = teachers or teacher_store_default(out, run_dir)
        sweep.execute(directory, variants, registry, first.runtime.jobs, console, store)
        if distributed.is_main():
            _write_report(directory, [directory])
    finally:
        distributed.stop()


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
    from kdcore.runs.layout import RECIPE, latest_run_directory, new_run_directory

    if run_dir is None:
        return latest_run_directory(out, name) if resume else new_run_directory(out, name)
    if resume:
        if not (run_dir / RECIPE).exists():
            raise KdcoreError(f"--run-dir {run_dir}: no run to resume there (no {RECIPE})")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise KdcoreError(f"--run-dir {run_dir}: directory is not empty; add --resume to continue it, or pick a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
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


@cli.command(name="report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the report (default: the first RUN_DIR).")
def report_command(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Aggregate finished runs into tables (mean ± std over seeds) and plots."""
    target = out or run_dirs[0]
    target.mkdir(parents=True, exist_ok=True)
    _write_report(target, list(run_dirs))


def _write_report(target: Path, run_dirs: list[Path]) -> None:
    from rich.table import Table

    from kdcore.results.collect import collect
    from kdcore.results.report import write_report
    from kdcore.results.tables import aggregate, format_cell

    results = collect(run_dirs)
    written = write_report(target, results)
    labels, rows = aggregate(results)
    labels = labels[:CONSOLE_COLUMNS]
    table = Table(title=f"mean ± std over seeds (all columns: {target / 'report.md'})")
    for column in ("group", "runs", *labels):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["group"], str(row["runs"]), *[format_cell(row.get(label)) for label in labels])
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in written))


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except KdcoreError as error:
        for line in str(error).splitlines():
            errors.print(f"[red]error[/]: {escape(line)}", soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        errors.print("interrupted; continue with: kdcore run RECIPE --resume")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        if debug:
            raise
        errors.print(f"[red]error[/]: {escape(f'{type(error).__name__}: {error}')} (rerun with --debug for the traceback)",
                     soft_wrap=True)
        sys.exit(EXIT_INTERNAL_ERROR)
if __name__ == "__main__":
    main()
