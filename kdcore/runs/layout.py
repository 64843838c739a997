"""The run directory: every name a run writes, and how each file is read and written.

    <out>/<recipe name>/<timestamp>/        a sweep (or a single run)
      recipe.yaml env.json                  the resolved recipe, the environment
      report.md report.csv ...              the report (written by :mod:`kdcore.results`)
      <variant id>/                         one run of the matrix (the sweep itself without one)
        recipe.yaml summary.json
        teacher -> <store>/<teacher key>/   a link into the store of shared teachers
        student/ prepare-<term>/            one folder per stage (:class:`StageFiles`)
    <out>/teachers/<teacher key>/           the store: a stage folder per trained teacher

A run directory holds ``kdcore.lock`` (an flock held by the process training there, with its
pid) and ``status.json`` (when it was created, and whether it failed before its first epoch).

Files are written to a temporary name beside the target and renamed over it, so a crash never
leaves half a file; the temporary files of a process that died are removed on the next start.
A checkpoint pins the stage's best-weights files as they are (``best.safetensors.at-<epoch>``,
hard links) so that a resumed stage starts from the best weights its checkpoint knew.
Weights are safetensors and resume states are read with ``weights_only=True``: nothing read here
can execute code. torch is imported only by the functions that read or write tensors, so reports
can use this module without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdcore.errors import KdcoreError

if TYPE_CHECKING:
    from torch import nn

RECIPE = "recipe.yaml"
ENVIRONMENT = "env.json"
SUMMARY = "summary.json"
TEACHER_LINK = "teacher"
TEACHER_STORE = "teachers"

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
PIN_MARK = ".at-"
"""``best.safetensors.at-30``: a best-weights file as it was at the checkpoint after epoch 30."""
BEST_BRIER_WEIGHTS = "best_brier.safetensors"
TEACHER_RECORD = "teacher.json"
METRICS = "metrics.jsonl"
DISTRIBUTED = "distributed.json"
LOCK = "kdcore.lock"
STATUS = "status.json"
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")

WEIGHTS_METADATA = "kdcore"
"""The key of the safetensors header's metadata under which kdcore stores, as JSON, what rebuilds
the network: ``{"format": 1, "kdcore": version, "architecture": {"name", "params"},
"num_classes", "input_shape", "normalization": {"mean", "std"} or null, "stage", "recipe",
"run"}``, plus ``"taps"`` where the recipe adds feature taps (see ``kdcore/distill/metadata.py``)."""
MAX_HEADER_BYTES = 100_000_000

MODEL_SELECTION = "val/top1"
"""The metric that picks the best epoch: validation top-1, never a test metric."""
BRIER_SELECTION = "val/brier"
"""The metric of a teacher chosen by validation Brier score (lowest wins), into BEST_BRIER_WEIGHTS."""


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file renamed over ``path``. A library's write error that wraps
    an operating-system error (safetensors: ``... (os error 28)``) is raised as that OSError,
    so that a full disk reads the same whoever wrote the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            write(temporary)
        except OSError as error:
            raise named(error, path) from None
        except Exception as error:
            code = re.search(r"os error (\d+)", str(error))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from error
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def named(error: OSError, path: Path) -> OSError:
    """``error`` naming ``path`` (a failed write names no file)."""
    if error.filename is not None:
        return error
    return OSError(error.errno, error.strerror, str(path))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def remove_stale_temporaries(directory: Path, recursive: bool = False) -> list[Path]:
    """Remove the temporary files (``.<name>.<pid>.tmp``) left by processes that no longer run:
    a kill in the middle of a write. Links are not followed. Returns what was removed."""
    removed = []
    if not directory.is_dir():
        return removed
    walk = os.walk(directory) if recursive else [(str(directory), [], os.listdir(directory))]
    for folder, _, names in walk:
        for name in names:
            match = TEMPORARY.match(name)
            if match is None or _process_alive(int(match["pid"])):
                continue
            path = Path(folder) / name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity (which JSON cannot hold) replaced by ``None``, in
    nested dicts, lists and tuples too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_yaml(path: Path, data: Any) -> None:
    write_atomically(path, lambda p: p.write_text(yaml.safe_dump(data, sort_keys=False)))


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an error message, shortened: torch's explain whole paragraphs."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    line = text.splitlines()[0].strip() if text else ""
    line = re.split(r"(?<=[a-z)])\. ", line, maxsplit=1)[0].rstrip(".")  # the first sentence
    return line if len(line) <= limit else line[: limit - 1] + "…"


def save_weights(model: nn.Module, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Safetensors weights; ``metadata`` (what :func:`kdcore.load` needs to rebuild the network,
    see :data:`WEIGHTS_METADATA`) is stored in the file's header as one JSON string."""
    import safetensors.torch

    header = {WEIGHTS_METADATA: json.dumps(metadata, sort_keys=True)} if metadata is not None else None
    write_atomically(path, lambda p: safetensors.torch.save_model(model, str(p), metadata=header))


def read_weights_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata :func:`save_weights` stored in a safetensors file, or ``None`` for a file
    without (weights saved before kdcore wrote any, or by another program). Reads the header
    only, without torch."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                raise ValueError("no safetensors header")
            header = json.loads(file.read(size))
        stored = (header.get("__metadata__") or {}).get(WEIGHTS_METADATA)
        return json.loads(stored) if stored is not None else None
    except OSError as error:
        raise KdcoreError(f"{path}: cannot read weights ({error.strerror or error})") from None
    except (ValueError, AttributeError) as error:
        raise KdcoreError(f"{path}: not a safetensors file ({error})") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights, insisting that every tensor fits the model."""
    import safetensors
    import safetensors.torch

    try:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False)
    except (OSError, safetensors.SafetensorError) as error:
        raise KdcoreError(f"{path}: cannot read weights ({_first_line(error)}); give a safetensors file of "
                          "the network's weights (as kdcore writes them)") from None
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1].strip()
        raise KdcoreError(f"{path}: weights do not fit {type(model).__name__}: {first_line.rstrip('.')}; "
                          "check the architecture in the recipe") from None
    if missing or unexpected:
        raise KdcoreError(
            f"{path}: weights do not fit {type(model).__name__} "
            f"(missing: {', '.join(sorted(missing)[:3]) or 'none'}; "
            f"unexpected: {', '.join(sorted(unexpected)[:3]) or 'none'}); "
            "check the architecture in the recipe"
        )


class StageFiles:
    """The folder of one training stage: metrics, resume state and weights."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def best_weights(self) -> Path:
        return self.path / BEST_WEIGHTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl``, in order. A torn last line (a kill or a
        full disk in the middle of an append) is left out; a bad line before it is an error."""
        if not self.metrics.exists():
            return []
        try:
            lines = self.metrics.read_text().splitlines()
        except UnicodeDecodeError:
            raise KdcoreError(f"{self.metrics}: not a kdcore metrics log (not text); delete it, "
                              "and the stage's checkpoint.pt with it, to train the stage again") from None
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                    raise ValueError("no epoch")
            except ValueError:
                if number == len(lines):
                    break  # torn by a kill: the epoch is redone from the checkpoint
                raise KdcoreError(
                    f"{self.metrics}:{number}: not an epoch record of kdcore; delete that line "
                    "(the epochs after the stage's checkpoint are trained again)"
                ) from None
            records.append(record)
        return records

    def append_record(self, record: dict[str, Any]) -> None:
        try:
            with self.metrics.open("a") as log:
                log.write(json.dumps(record) + "\n")
        except OSError as error:
            raise named(error, self.metrics) from None

    def keep_records(self, epochs_done: int) -> None:
        """Drop the records of epochs after ``epochs_done`` (a resumed stage redoes them) and a
        torn last line."""
        if self.metrics.exists():
            kept = [json.dumps(r) for r in self.records() if r["epoch"] <= epochs_done]
            write_atomically(self.metrics, lambda p: p.write_text("".join(line + "\n" for line in kept)))

    def forget_records(self) -> None:
        self.metrics.unlink(missing_ok=True)

    def best_validation(self) -> tuple[int, float] | None:
        """(epoch, validation top-1) of the best epoch logged so far, or ``None`` without a
        validation split. Model selection never looks at the test split."""
        return self.best_by(MODEL_SELECTION, maximise=True)

    def best_by(self, metric: str, maximise: bool) -> tuple[int, float] | None:
        """(epoch, value) of the epoch with the highest (``maximise``) or lowest ``metric``
        logged so far, the earliest on ties; ``None`` where no record has it."""
        scored = [(r["epoch"], r[metric]) for r in self.records() if metric in r]
        if not scored:
            return None
        sign = 1 if maximise else -1
        return max(scored, key=lambda item: (sign * item[1], -item[0]))

    @property
    def record(self) -> Path:
        """``teacher.json``: what a stored teacher is (written by the teacher stage)."""
        return self.path / TEACHER_RECORD

    def save_state(self, state: dict[str, Any]) -> None:
        """Resume state (weights, optimiser, RNG): tensors and plain Python values only. It is
        serialised in memory and written by Python, so a full disk is an OSError naming the
        file (torch's own writer says ``unexpected pos ...``)."""
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomically(self.checkpoint, lambda p: p.write_bytes(buffer.getbuffer()))

    def load_state(self) -> dict[str, Any]:
        """The resume state, or a KdcoreError naming the file when it is not one kdcore wrote
        (empty, truncated, another program's pickle)."""
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EIO):
                raise named(error, self.checkpoint) from None
            # torch reads a truncated archive as "Invalid argument"
            raise KdcoreError(f"{self.checkpoint}: not a readable kdcore checkpoint ({_first_line(error)}); "
                              f"{self.checkpoint_fix}") from None
        except Exception as error:
            reason = _first_line(error) or ("empty file" if self.checkpoint.stat().st_size == 0 else type(error).__name__)
            raise KdcoreError(f"{self.checkpoint}: not a readable kdcore checkpoint ({reason}); "
                              f"{self.checkpoint_fix}") from None
        if not isinstance(state, dict):
            raise KdcoreError(f"{self.checkpoint}: not a kdcore checkpoint (a {type(state).__name__}, "
                              f"not a dict); {self.checkpoint_fix}")
        return state

    @property
    def checkpoint_fix(self) -> str:
        return f"delete it to train this stage again from epoch 1 (rm {self.checkpoint})"

    def remove_stale_temporaries(self) -> list[Path]:
        return remove_stale_temporaries(self.path)

    def pin(self, names: list[str], epochs_done: int) -> dict[str, str]:
        """Hard links (copies where the file system has none) of the best-weights files among
        ``names`` as they are after ``epochs_done`` epochs, named for that epoch
        (``best.safetensors.at-30``), for the checkpoint to name. A stage resumed from that
        checkpoint restores them (:meth:`restore_pins`): a best file that the stopped process
        wrote after its checkpoint belongs to an epoch the resumed stage forgets, and on
        non-deterministic hardware the resumed stage may never write over it."""
        pins = {}
        for name in names:
            if (self.path / name).exists():
                pins[name] = f"{name}{PIN_MARK}{epochs_done}"
                write_atomically(self.path / pins[name], lambda p, name=name: _link_or_copy(self.path / name, p))
        return pins

    def drop_pins(self, keep: dict[str, str]) -> None:
        """Remove the pinned files other than those ``keep`` names."""
        for path in self.path.glob(f"*{PIN_MARK}*"):
            if path.name not in keep.values():
                path.unlink(missing_ok=True)

    def restore_pins(self, names: list[str], pins: dict[str, str]) -> None:
        """Each best file among ``names`` as its checkpoint pinned it (``pins``: {best file:
        pinned file}); one the checkpoint has no pin of did not exist then, and is removed. A
        pin that is gone (the stage had finished) leaves its best file as it is."""
        for name in names:
            if name not in pins:
                (self.path / name).unlink(missing_ok=True)
            elif (self.path / pins[name]).exists():
                write_atomically(self.path / name, lambda p, name=name: _link_or_copy(self.path / pins[name], p))
        self.drop_pins(pins)

    def write_distributed(self, world_size: int, identical: bool) -> None:
        write_json(self.path / DISTRIBUTED, {"world_size": world_size, "identical_weights": identical})


class RunDirectory:
    """The folder of one run (a variant of a sweep, or a single run)."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def finished(self) -> bool:
        return self.summary_file.exists()

    def stage(self, name: str) -> StageFiles:
        return StageFiles(self.path / name)

    def variant(self, variant_id: str) -> RunDirectory:
        """The folder of a matrix variant; the sweep's own folder for a recipe without matrix."""
        return RunDirectory(self.path / variant_id) if variant_id else self

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_file, summary)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_file.read_text())

    def link_teacher(self, stored: Path) -> None:
        """Make ``teacher`` point at a stored teacher (a relative link)."""
        link = self.path / TEACHER_LINK
        self.path.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            return
        os.symlink(os.path.relpath(stored, self.path), link, target_is_directory=True)

    @property
    def teacher(self) -> Path:
        return self.path / TEACHER_LINK


def new_run_directory(out: Path, name: str) -> Path:
    """``out/<name>/<timestamp>``, created here so that no two runs ever share a directory."""
    parent = out / name
    check_name_length(parent, name, "recipe name", "shorten the recipe's name: field (or --set name=...)")
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        mark_created(candidate)
        return candidate
    raise KdcoreError(f"{parent}: cannot create a new run directory")


def mark_created(directory: Path) -> None:
    """Start ``status.json``: the creation time orders the runs of a recipe (names do not:
    ``...-9`` sorts after ``...-10``)."""
    write_json(directory / STATUS, {"created_ns": time.time_ns(), "status": "created"})


def read_status(directory: Path) -> dict[str, Any]:
    """``status.json``, or ``{}`` where there is none (runs made before it existed) or it is
    unreadable: the status only orders and filters runs, it never stops one."""
    try:
        status = json.loads((directory / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def update_status(directory: Path, **fields: Any) -> None:
    """Record the run's state (``running``, ``finished``, ``failed``, ``interrupted``) and
    whether any epoch was trained in it, keeping its creation time."""
    status = read_status(directory)
    status.setdefault("created_ns", _creation_fallback(directory))
    status.update(fields)
    write_json(directory / STATUS, status)


def trained_anything(directory: Path) -> bool:
    """Whether any stage in the run directory (its variants included) logged an epoch; the
    link to a stored teacher is not followed (the store is shared with other runs)."""
    return any(METRICS in names or CHECKPOINT in names for _, _, names in os.walk(directory))


def _creation_fallback(directory: Path) -> int:
    """When a run without ``status.json`` began: its recipe is written once, at the start."""
    for candidate in (directory / RECIPE, directory):
        with contextlib.suppress(OSError):
            return candidate.stat().st_mtime_ns
    return 0


def latest_run_directory(out: Path, name: str) -> Path:
    """The run of ``name`` under ``out`` created last, leaving out runs that failed before
    training anything (nothing to resume there)."""
    parent = out / name
    runs = [p for p in parent.iterdir() if (p / RECIPE).exists()] if parent.is_dir() else []
    statuses = {p: read_status(p) for p in runs}
    usable = [p for p in runs if not (statuses[p].get("status") == "failed" and not statuses[p].get("trained"))]
    if not usable:
        skipped = f" ({len(runs)} failed before training)" if runs else ""
        raise KdcoreError(f"--resume: no run of '{name}' to resume under {out}{skipped}; "
                          "start one without --resume")
    return max(usable, key=lambda p: (statuses[p].get("created_ns") or _creation_fallback(p), _natural(p.name)))


def _natural(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def check_name_length(path: Path, name: str, what: str, fix: str = "shorten it") -> None:
    """A clear error before a file system refuses a name longer than it allows (255 bytes
    on most)."""
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(name))
    if size > limit:
        raise KdcoreError(f"{what} '{name[:40]}…' is {size} bytes, longer than the {limit} the file system "
                          f"allows for a name in {folder}; {fix}")


class RunLock:
    """An exclusive flock on ``kdcore.lock`` in a run directory, held while a process trains
    there, with the holder's pid in the file. A second process is refused, naming the holder."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK
        self._file: Any = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                file.close()
                raise
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise KdcoreError(
                f"{self.path.parent}: another kdcore process (pid {holder}) is training in this run directory; "
                f"wait for it to end or stop it (kill {holder}), then resume"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def teacher_store_default(out: Path, run_dir: Path | None) -> Path:
    """``OUT/teachers``, or beside an explicit ``--run-dir``."""
    return (run_dir.parent if run_dir is not None else out) / TEACHER_STORE


def describe_os_error(error: OSError) -> tuple[str, bool]:
    """One line for an operating-system error (a file it names, what is wrong, the fix) and
    whether it failed a run that had started (a full disk) rather than refused bad input."""
    where = error.filename if error.filename is not None else "a file"
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    code = error.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (f"{where}: no space left on the device (or over quota); free space there, or pick another "
                "--out/--teachers, then continue with --resume (checkpoints are intact)", True)
    if code == errno.EROFS:
        return (f"{where}: the file system is read-only; pick a writable folder with --out (or --run-dir, "
                "--teachers)", False)
    if code in (errno.EACCES, errno.EPERM):
        return (f"{where}: permission denied (not writable by this user); pick a writable folder with --out "
                "(or --run-dir, --teachers), or change its permissions", False)
    if code == errno.ENAMETOOLONG:
        return (f"{where}: a name in this path is longer than the file system allows; shorten the recipe's "
                "name, the matrix values or the folder", False)
    if code == errno.ENOENT:
        return f"{where}: no such file or directory; check the path", False
    if code in (errno.ENOTDIR, errno.EISDIR):
        return f"{where}: {error.strerror.lower()}; give a folder where one is asked for, a file otherwise", False
    return f"{where}: {error.strerror or error}; check the path and the disk", True
