"""Networks out of kdcore: :func:`load` rebuilds a trained network from its weights file alone,
and :func:`export` writes it as ONNX, TorchScript or safetensors (``kdcore export``).

Every weights file a run writes carries, in its safetensors header, what rebuilds the network:
the architecture by name and params, the number of classes, the input shape, the inputs'
normalisation, the stage, the run and the kdcore version (:mod:`kdcore.distill.metadata`). The
architecture is built through the registry, so the plugin that provides it must be installed.

ONNX export uses PyTorch's exporter (``torch.onnx.export(dynamo=True)``, which needs ``onnx``
and ``onnxscript``) with a dynamic batch axis; input ``inputs``, output ``logits``. Both ONNX
and TorchScript files are checked after writing on a batch of another size than the example
they were traced with: ONNX with onnxruntime where it is installed, TorchScript with
``torch.jit.load``. ``pip install 'kdcore[export]'`` installs onnx, onnxscript and onnxruntime.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.api import ArchitectureContext
from kdcore.config.schema import Recipe
from kdcore.distill.dataset import build_dataset
from kdcore.distill.metadata import FORMAT, weights_metadata
from kdcore.distill.settings import runtime_values
from kdcore.errors import KdcoreError, first_line
from kdcore.registry import Registry, load_registry
from kdcore.runs.layout import (
    BEST_WEIGHTS,
    RECIPE,
    SUMMARY,
    WEIGHTS,
    load_weights,
    read_weights_metadata,
    read_yaml,
    save_weights,
    write_atomically,
)

STAGES = ("student", "teacher")
WEIGHT_CHOICES = {"last": WEIGHTS, "best": BEST_WEIGHTS}
FORMATS = ("onnx", "torchscript", "safetensors")
INSTALL_EXPORT = "pip install 'kdcore[export]'"
INPUT_NAME, OUTPUT_NAME = "inputs", "logits"
EXAMPLE_BATCH, CHECK_BATCH = 2, 3
"""The batch size the network is traced with, and the other one the written file is checked on."""
TORCHSCRIPT_METADATA = "kdcore.json"
"""The extra file of a TorchScript archive that holds the metadata (``torch.jit.load(...,
_extra_files={"kdcore.json": ""})``); ONNX files hold it in ``metadata_props["kdcore"]``."""


def load(path: str | Path, registry: Registry | None = None, *, stage: str = "student",
         weights: str = "last") -> nn.Module:
    """The network of a weights file, on the CPU in eval mode, with its metadata as
    ``.kdcore_metadata`` (a dict). ``path`` is a ``.safetensors`` file kdcore wrote, or a run
    directory (then its ``stage``'s ``weights``: ``last`` is ``model.safetensors``, ``best`` is
    ``best.safetensors``). The architecture is built through ``registry`` (default: the installed
    plugins) and the weights must fit it exactly."""
    file = weights_file(Path(path), stage, weights)
    metadata = read_metadata(file)
    return _network(metadata, file, registry or load_registry())


def read_metadata(file: Path) -> dict[str, Any]:
    """The metadata of a weights file; a file without is refused with the fix."""
    metadata = read_weights_metadata(file)
    if metadata is None:
        raise KdcoreError(
            f"{file}: the weights file carries no kdcore metadata (architecture, classes, input shape); "
            "re-export it from its run with kdcore export RUN_DIR --format safetensors --out FILE, or build the "
            "architecture yourself and read it with kdcore.runs.layout.load_weights"
        )
    if not isinstance(metadata, dict) or not isinstance(metadata.get("format"), int):
        raise KdcoreError(f"{file}: the kdcore metadata in the weights file is malformed (no format number)")
    if metadata["format"] > FORMAT:
        raise KdcoreError(
            f"{file}: kdcore metadata format {metadata['format']} (written by kdcore {metadata.get('kdcore', '?')}) "
            f"is newer than this kdcore reads ({FORMAT}); upgrade kdcore"
        )
    return metadata


def weights_file(path: Path, stage: str = "student", weights: str = "last") -> Path:
    """``path`` itself when it is a file, else the ``stage``'s weights file in the run
    directory ``path``."""
    if stage not in STAGES:
        raise KdcoreError(f"stage '{stage}' is not one of {', '.join(STAGES)}")
    if weights not in WEIGHT_CHOICES:
        raise KdcoreError(f"weights '{weights}' is not one of {', '.join(WEIGHT_CHOICES)}")
    if path.is_file():
        return path
    if not path.is_dir():
        raise KdcoreError(f"{path}: no such weights file or run directory")
    stage_dir = path / stage
    if not stage_dir.is_dir():
        variants = sorted(p.name for p in path.iterdir() if (p / RECIPE).is_file() or (p / SUMMARY).is_file())
        if variants:
            raise KdcoreError(f"{path}: no {stage}/ folder, but it holds runs ({', '.join(variants[:3])}"
                              f"{', ...' if len(variants) > 3 else ''}); pass one of them, e.g. {path / variants[0]}")
        raise KdcoreError(f"{path}: no {stage}/ folder (not a run directory, or the recipe has no {stage} stage "
                          "that kdcore trained)")
    file = stage_dir / WEIGHT_CHOICES[weights]
    if not file.is_file():
        why = " (kept only with a validation split; use --weights last)" if weights == "best" else \
            " (the stage has not finished; resume the run)"
        raise KdcoreError(f"{file}: not found{why}")
    return file


@dataclass
class Exported:
    path: Path
    format: str
    metadata: dict[str, Any]
    check: str
    """How the written file was checked against the network (one phrase)."""

    def describe(self) -> str:
        meta = self.metadata
        shape = ", ".join(["batch", *map(str, meta["input_shape"])])
        normalization = meta.get("normalization")
        inputs = f"inputs ({shape})" + (
            f", normalised: (x/255 - mean) / std with mean {_numbers(normalization['mean'])}, "
            f"std {_numbers(normalization['std'])}" if normalization else ""
        )
        run = f" of run {meta['run']}" if meta.get("run") else ""
        return (f"wrote {self.path} ({self.format}; {meta['stage']} {meta['architecture']['name']}{run}, "
                f"{meta['num_classes']} classes; {inputs}); {self.check}")


def export(source: str | Path, fmt: str, out: str | Path, *, stage: str = "student", weights: str = "last",
           registry: Registry | None = None) -> Exported:
    """Write the network of ``source`` (a run directory or a weights file, as for :func:`load`)
    to ``out`` as ``fmt``: ``onnx``, ``torchscript`` or ``safetensors`` (the weights with their
    metadata). Weights of a run directory written without metadata (older runs) get theirs from
    the run's recipe, which builds its dataset once to know the classes and input shape."""
    if fmt not in FORMATS:
        raise KdcoreError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    source, out = Path(source), Path(out)
    if out.is_dir():
        raise KdcoreError(f"--out {out} is a directory; name the file to write")
    if fmt == "onnx":
        _require_onnx()
    registry = registry or load_registry()
    file = weights_file(source, stage, weights)
    if source.is_dir() and read_weights_metadata(file) is None:
        metadata = metadata_from_run(source, stage, registry)
    else:
        metadata = read_metadata(file)
    model = _network(metadata, file, registry)
    if fmt == "safetensors":
        save_weights(model, out, metadata)
        check = "the weights as read, with their metadata"
    elif fmt == "torchscript":
        check = _write_torchscript(model, metadata, out)
    else:
        check = _write_onnx(model, metadata, out)
    return Exported(out, fmt, metadata, check)


def metadata_from_run(run_dir: Path, stage: str, registry: Registry) -> dict[str, Any]:
    """The metadata of a stage's weights, from the run's resolved recipe and its dataset."""
    recipe_file = run_dir / RECIPE
    if not recipe_file.is_file():
        raise KdcoreError(f"{run_dir}: no {RECIPE}, so the weights' architecture is unknown; pass a weights file "
                          "with kdcore metadata instead")
    data = read_yaml(recipe_file)
    if not isinstance(data, dict) or "matrix" in data:
        raise KdcoreError(f"{recipe_file}: not the resolved recipe of one run")
    label = run_dir.name if "overrides" in data else ""
    data = {key: value for key, value in data.items() if key != "overrides"}
    try:
        recipe = Recipe.model_validate(data, context={"registry": registry})
    except ValueError as error:
        raise KdcoreError(f"{recipe_file}: does not validate against the installed plugins: "
                          f"{str(error).splitlines()[0]}") from None
    config = getattr(recipe, stage)
    if config is None:
        raise KdcoreError(f"{recipe_file}: the recipe has no {stage} stage")
    bundle = build_dataset(registry, recipe, "cpu", runtime_values(recipe.runtime))
    return weights_metadata(config.arch, bundle, stage, recipe.name, label)


def _network(metadata: dict[str, Any], file: Path, registry: Registry) -> nn.Module:
    try:
        architecture = metadata["architecture"]
        name, params = architecture["name"], architecture.get("params") or {}
        context = ArchitectureContext(int(metadata["num_classes"]), tuple(int(n) for n in metadata["input_shape"]))
    except (KeyError, TypeError, ValueError) as error:
        raise KdcoreError(f"{file}: the kdcore metadata in the weights file is malformed ({error!r} is missing "
                          "or wrong)") from None
    try:
        component = registry.get("architecture", name)
    except KdcoreError as error:
        raise KdcoreError(f"{file}: {error}; install the plugin that provides it") from None
    try:
        validated = component.spec.params.model_validate(params)
    except ValueError as error:
        raise KdcoreError(f"{file}: architecture '{name}' refuses the params stored with the weights "
                          f"({str(error).splitlines()[0]}); the installed plugin may differ from the one that "
                          "trained it") from None
    with torch.random.fork_rng(devices=[]):  # the random initialisation is overwritten: leave the RNG as it was
        module = component.spec.builder()(validated, context)
    load_weights(module, file)
    module.eval()
    module.kdcore_metadata = metadata
    return module


def _example(metadata: dict[str, Any], batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *metadata["input_shape"], generator=generator)


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise KdcoreError(f"--format onnx needs {' and '.join(missing)}: {INSTALL_EXPORT}")


def _write_onnx(model: nn.Module, metadata: dict[str, Any], out: Path) -> str:
    example = _example(metadata, EXAMPLE_BATCH, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
    except Exception as error:  # the exporter's errors are long; the first line says what failed
        raise KdcoreError(f"cannot export architecture '{metadata['architecture']['name']}' to ONNX: "
                          f"{type(error).__name__}: {first_line(error)}; try --format torchscript") from None
    program.model.metadata_props["kdcore"] = json.dumps(metadata, sort_keys=True)
    write_atomically(out, lambda p: program.save(str(p), external_data=False))
    if importlib.util.find_spec("onnxruntime") is None:
        return f"not checked (onnxruntime is not installed: {INSTALL_EXPORT})"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs = _example(metadata, CHECK_BATCH, 1)
    theirs = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0])
    return _compare(model, inputs, theirs, "onnxruntime", out)


def _write_torchscript(model: nn.Module, metadata: dict[str, Any], out: Path) -> str:
    example = _example(metadata, EXAMPLE_BATCH, 0)
    extra = {TORCHSCRIPT_METADATA: json.dumps(metadata, sort_keys=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.10+ marks TorchScript deprecated; tracer warnings are checked below
        try:
            traced = torch.jit.trace(model, example)
        except Exception as error:
            raise KdcoreError(f"cannot trace architecture '{metadata['architecture']['name']}' for TorchScript: "
                              f"{type(error).__name__}: {first_line(error)}; try --format onnx") from None
        write_atomically(out, lambda p: torch.jit.save(traced, str(p), _extra_files=extra))
        loaded = torch.jit.load(str(out), map_location="cpu")
    inputs = _example(metadata, CHECK_BATCH, 1)
    with torch.no_grad():
        theirs = loaded(inputs)
    return _compare(model, inputs, theirs, "torch.jit.load", out)


@torch.no_grad()
def _compare(model: nn.Module, inputs: torch.Tensor, theirs: torch.Tensor, runner: str, out: Path) -> str:
    ours = model(inputs)
    if theirs.shape != ours.shape:
        raise KdcoreError(f"{out}: on a batch of {len(inputs)} the exported network returns shape "
                          f"{tuple(theirs.shape)}, not {tuple(ours.shape)}; it depends on the example's batch size")
    difference = float((theirs.float() - ours.float()).abs().max())
    scale = float(ours.abs().max())
    if not difference <= 1e-3 * (1 + scale):
        raise KdcoreError(f"{out}: on a batch of {len(inputs)}, {runner} gives logits up to {difference:.3g} away "
                          "from the network's; the export is wrong, try the other format")
    return f"checked with {runner} on a batch of {len(inputs)}: logits within {difference:.1e}"


def _numbers(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
