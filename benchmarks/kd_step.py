"""Throughput of kdcore's KD training step against a peer-style reference loop.

Both run in this process, on the same synthetic CIFAR-100-shaped data (random uint8 images,
100 classes), with the same teacher weights, the same architectures, batch size, optimiser
and number of steps:

* **kdcore**: the student stage of :class:`kdcore.distill.run.Run` (KD T=4 weight 0.9, CE weight
  0.1, SGD lr 0.05 momentum 0.9 wd 5e-4, the runtime defaults of the device unless
  ``--kdcore-runtime`` says otherwise), fed by kdcore's in-memory path: uint8 batches sliced
  from a tensor and augmented on the batch's device with the cifar100 plugin's
  ``CropFlipNormalize``. The stage is one epoch of ``10·ceil(steps/8)`` steps; its progress
  reports (every tenth of the epoch) are timestamped, and the ``8·ceil(steps/8)`` steps between
  the first and the last report inside the epoch are timed: not the first tenth of the epoch
  (fresh optimiser state), nor the held-out evaluation at its end.
* **reference**: a loop written as RepDistiller / mdistiller write theirs: a Dataset of PIL
  images with torchvision RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and
  Normalize, a shuffling DataLoader with ``--workers`` processes, fp32, the teacher in eval
  mode under ``torch.no_grad()``, ``0.1·CE + 0.9·KL(batchmean)·T²`` and an SGD step. Its first
  ``4 × workers`` steps (at least 5) start the workers and fill the loader's prefetch queue
  and are not timed; as many steps after them as kdcore's timed window are.

Prints images/s of each, their ratio, the FLOPs of one training image (teacher forward + 3 ×
student forward, counted with FlopCounterMode) and, on CUDA, each side's fraction of the
arithmetic ceiling ``--peak-tflops`` / FLOPs per image.

With ``--concurrent N``, N kdcore runs then train at the same time on the same device, each in
its own process (as ``runtime.jobs`` runs a sweep's runs): each warms up, waits for the others,
then times its epoch as above; the aggregate is all of their timed images over the span from
the first start to the last end, compared with the one reference loop.

    .venv/bin/python benchmarks/kd_step.py                       # CPU defaults: resnet56 -> resnet20
    .venv/bin/python benchmarks/kd_step.py --device cuda         # resnet32x4 -> resnet8x4
    .venv/bin/python benchmarks/kd_step.py --device cuda --concurrent 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from kdcore.api import ArchitectureContext, DatasetSpec
from kdcore.callbacks import Callback, StageInfo
from kdcore.config.schema import Recipe
from kdcore.distill.run import Run
from kdcore.engine.accelerator import resolve_device
from kdcore.nn import DatasetBundle, Split
from kdcore.registry import PluginInfo, Registry, load_registry
from kdcore.runs.layout import save_weights
from kdcore_vision.datasets.cifar import CIFAR100
from kdcore_vision.transforms import CropFlipNormalize, Normalize

NUM_CLASSES = 100
IMAGE_SHAPE = (3, 32, 32)
DATASET = "bench-cifar100"
TEST_SIZE = 8  # the held-out split that each kdcore epoch evaluates (not timed)
TEMPERATURE = 4.0
KD_WEIGHT = 0.9
CE_WEIGHT = 0.1
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


# --------------------------------------------------------------------------- data

def synthetic_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (count, 3, 32, 32) and labels in 0..99."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    return images, labels


def kdcore_registry(base: Registry, train_size: int, test_size: int) -> Registry:
    """The installed plugins plus ``bench-cifar100``: the cifar100 plugin's in-memory form and
    batch transforms, on random images."""

    def build(params, ctx) -> DatasetBundle:
        train_inputs, train_labels = synthetic_images(train_size, seed=1)
        test_inputs, test_labels = synthetic_images(test_size, seed=2)
        return DatasetBundle(
            num_classes=NUM_CLASSES,
            input_shape=IMAGE_SHAPE,
            train=Split(inputs=train_inputs, labels=train_labels),
            test=Split(inputs=test_inputs, labels=test_labels),
            train_transform=CropFlipNormalize(CIFAR100.mean, CIFAR100.std),
            eval_transform=Normalize(CIFAR100.mean, CIFAR100.std),
        )

    return base.with_component("dataset", DatasetSpec(name=DATASET, summary="benchmark", build=build),
                               PluginInfo("bench", "benchmarks", "0"))


class PilImages(Dataset):
    """CIFAR as torchvision holds it: HWC uint8 arrays, a PIL image per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.transform(Image.fromarray(self.data[index]))
        return image, self.targets[index]


# --------------------------------------------------------------------------- models

def build_arch(registry: Registry, name: str) -> nn.Module:
    spec = registry.get("architecture", name).spec
    params = spec.params.model_validate({})
    return spec.builder()(params, ArchitectureContext(NUM_CLASSES, IMAGE_SHAPE))


def forward_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(inputs)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- kdcore

def kdcore_recipe(args, registry: Registry, teacher_checkpoint: Path) -> Recipe:
    data = {
        "name": "kd-step-benchmark",
        "seed": 0,
        "data": {"name": DATASET},
        "optimizer": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        "teacher": {"arch": {"name": args.teacher}, "checkpoint": str(teacher_checkpoint)},
        "student": {
            "arch": {"name": args.student},
            "ce_weight": CE_WEIGHT,
            "distillers": [{"name": "kd", "weight": KD_WEIGHT,
                            "params": {"temperature": TEMPERATURE, "scale_by_t2": True}}],
            "epochs": 1,
            "batch_size": args.batch_size,
            "eval_batch_size": args.batch_size,
        },
        "runtime": {"device": str(args.device), "num_workers": 0, **args.kdcore_runtime},
    }
    return Recipe.model_validate(data, context={"registry": registry})


class StepClock(Callback):
    """Timestamps the student stage's progress reports, which the epoch loop sends every
    ``steps // 10`` steps (on CUDA after a synchronize): the steps between the first and the last
    report inside the epoch are timed, so neither the first steps (fresh optimiser state) nor the
    held-out evaluation at the end of the epoch count. Times are ``time.monotonic()``, one clock
    for all processes of the machine, so concurrent runs' windows can be compared."""

    def __init__(self, device: torch.device):
        self.device = device
        self.done = 0
        self.marks: list[tuple[int, float]] = []

    def on_stage_start(self, stage: StageInfo) -> None:
        self.done = stage.steps_per_epoch * stage.start_epoch
        self.marks = []

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        self.done += steps
        if stage.stage == "student":
            synchronize(self.device)
            self.marks.append((self.done, time.monotonic()))

    def on_epoch_end(self, stage: StageInfo, record) -> None:
        if stage.stage == "student" and self.marks:
            self.marks.pop()  # the epoch's last report comes after its held-out evaluation


def kdcore_steps(timed: int) -> int:
    """Steps of the kdcore epoch: with reports every ``total // 10`` steps, ``10·r`` steps give
    reports at r, 2r, …, 9r and a timed window of ``8·r ≥ timed`` steps."""
    return 10 * -(-timed // 8)


def time_kdcore(args, base: Registry, teacher_checkpoint: Path, steps: int, workdir: Path) -> dict:
    """One kdcore run whose student stage is one epoch of :func:`kdcore_steps` steps."""
    total = kdcore_steps(steps)
    registry = kdcore_registry(base, total * args.batch_size, TEST_SIZE)
    recipe = kdcore_recipe(args, registry, teacher_checkpoint)
    directory = Path(tempfile.mkdtemp(dir=workdir))
    clock = StepClock(args.device)
    Run(recipe, directory, registry, callbacks=clock).execute()  # restores the caller's deterministic settings
    if len(clock.marks) < 2:
        raise RuntimeError("the student stage reported progress fewer than twice within its epoch; "
                           "cannot time its steps")
    (first_step, first_time), (last_step, last_time) = clock.marks[0], clock.marks[-1]
    return {"steps": last_step - first_step, "seconds": last_time - first_time, "skipped": first_step,
            "start": first_time, "end": last_time}


# --------------------------------------------------------------------------- reference

def time_reference(args, teacher: nn.Module, steps: int) -> dict:
    """The peer-style loop: ``skip`` untimed steps that fill the prefetch queue, then ``steps``."""
    device = args.device
    skip = max(5, 4 * args.workers)
    images, labels = synthetic_images((skip + steps) * args.batch_size, seed=1)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR100.mean, CIFAR100.std),
    ])
    loader = DataLoader(PilImages(images, labels, transform), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    student = build_arch(load_registry_cached(), args.student).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    teacher.eval()
    student.train()
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as RepDistiller and mdistiller set it
    total = torch.zeros((), device=device)
    started = None
    try:
        for step, (inputs, targets) in enumerate(loader):
            if step == skip:
                synchronize(device)
                started = time.perf_counter()
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            logits = student(inputs)
            ce = F.cross_entropy(logits, targets)
            kd = F.kl_div(F.log_softmax(logits / TEMPERATURE, dim=1),
                          F.softmax(teacher_logits / TEMPERATURE, dim=1),
                          reduction="batchmean") * TEMPERATURE**2
            loss = CE_WEIGHT * ce + KD_WEIGHT * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        synchronize(device)
        seconds = time.perf_counter() - started
    finally:
        torch.backends.cudnn.benchmark = benchmark
    if not torch.isfinite(total):
        raise RuntimeError("reference loop: non-finite loss")
    return {"steps": steps, "seconds": seconds, "skipped": skip}


_REGISTRY: Registry | None = None


def load_registry_cached() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY


# --------------------------------------------------------------------------- main

def runtime_settings(parser: argparse.ArgumentParser, settings: list[str]) -> dict:
    """``KEY=VALUE`` command-line settings as a recipe's ``runtime:`` entries (YAML values)."""
    runtime = {}
    for setting in settings:
        key, separator, value = setting.partition("=")
        if not separator:
            parser.error(f"runtime setting {setting!r}: expected KEY=VALUE")
        runtime[key] = yaml.safe_load(value)
    return runtime


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--teacher", help="default: resnet32x4 on CUDA, resnet56 on CPU")
    parser.add_argument("--student", help="default: resnet8x4 on CUDA, resnet20 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps per side, rounded up to a multiple of 8; default 200 on CUDA, 32 on CPU")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="reference DataLoader workers; default 8 on CUDA, 2 on CPU")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per side, alternating; the median is reported (default 1)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up runs")
    parser.add_argument("--kdcore-runtime", action="append", default=[], metavar="KEY=VALUE",
                        help="a runtime setting of the kdcore recipe (YAML value), e.g. precision=fp32; "
                             "repeatable. Default: kdcore's own defaults for the device")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--concurrent", type=int, default=1,
                        help="also time this many kdcore runs training at once on the device, each in its own "
                             "process, and report their aggregate images/s (default 1: not timed)")
    parser.add_argument("--member", type=Path, help=argparse.SUPPRESS)  # a process of --concurrent
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="peak dense bf16 TFLOP/s for the ceiling (CUDA only); default 790, an H200 "
                             "as measured in the issue")
    args = parser.parse_args(argv)
    args.kdcore_runtime = runtime_settings(parser, args.kdcore_runtime)
    args.device = resolve_device(args.device)
    cuda = args.device.type == "cuda"
    args.teacher = args.teacher or ("resnet32x4" if cuda else "resnet56")
    args.student = args.student or ("resnet8x4" if cuda else "resnet20")
    args.steps = args.steps or (200 if cuda else 32)
    args.workers = args.workers if args.workers is not None else (8 if cuda else 2)
    if min(args.steps, args.batch_size, args.repeats, args.warmup_steps, args.concurrent) < 1:
        parser.error("--steps, --batch-size, --repeats, --warmup-steps and --concurrent must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.member is not None:
        return concurrent_member(args)
    device = args.device
    registry = load_registry_cached()
    with tempfile.TemporaryDirectory(prefix="kd-step-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(0)
        teacher = build_arch(registry, args.teacher)
        checkpoint = workdir / "teacher.safetensors"
        save_weights(teacher, checkpoint)
        teacher.to(device).eval().requires_grad_(False)

        probe = torch.randn(args.batch_size, *IMAGE_SHAPE, device=device)
        student_probe = build_arch(registry, args.student).to(device)
        flops_per_image = (forward_flops(teacher, probe) + 3 * forward_flops(student_probe, probe)) / args.batch_size
        del student_probe

        # warm-up: imports, allocator, kernels, worker start-up
        time_kdcore(args, registry, checkpoint, args.warmup_steps, workdir)
        time_reference(args, teacher, args.warmup_steps)

        kdcore_runs, reference_runs = [], []
        for _ in range(args.repeats):
            kdcore_runs.append(time_kdcore(args, registry, checkpoint, args.steps, workdir))
            reference_runs.append(time_reference(args, teacher, kdcore_runs[-1]["steps"]))
        members = time_concurrent(args, workdir) if args.concurrent > 1 else None

    kdcore_ips = statistics.median(r["steps"] * args.batch_size / r["seconds"] for r in kdcore_runs)
    reference_ips = statistics.median(r["steps"] * args.batch_size / r["seconds"] for r in reference_runs)
    result = {
        "device": describe_device(device),
        "threads": torch.get_num_threads(),
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "steps": kdcore_runs[0]["steps"],
        "kdcore_skipped_steps": kdcore_runs[0]["skipped"],
        "reference_skipped_steps": reference_runs[0]["skipped"],
        "repeats": args.repeats,
        "workers": args.workers,
        "kdcore_images_per_s": kdcore_ips,
        "reference_images_per_s": reference_ips,
        "ratio": kdcore_ips / reference_ips,
        "gflops_per_image": flops_per_image / 1e9,
    }
    if members is not None:
        span = max(m["end"] for m in members) - min(m["start"] for m in members)
        aggregate = sum(m["steps"] for m in members) * args.batch_size / span
        result.update(concurrent=args.concurrent, concurrent_images_per_s=aggregate,
                      concurrent_ratio=aggregate / reference_ips,
                      concurrent_overlap=min(m["end"] for m in members) > max(m["start"] for m in members))
    if device.type == "cuda":
        ceiling = args.peak_tflops * 1e12 / flops_per_image
        result.update(peak_tflops=args.peak_tflops, ceiling_images_per_s=ceiling,
                      kdcore_fraction_of_ceiling=kdcore_ips / ceiling,
                      reference_fraction_of_ceiling=reference_ips / ceiling)
    print_table(result)
    return result


def time_concurrent(args, workdir: Path) -> list[dict]:
    """Starts ``--concurrent`` copies of this script as member processes and returns each one's
    timed window. Members share the teacher checkpoint in ``workdir`` and meet there: each
    writes ``ready-<pid>`` after its warm-up and starts timing once all have."""
    members = workdir / "members"
    members.mkdir()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.concurrent)
    command = [sys.executable, str(Path(__file__).resolve()), "--member", str(members),
               "--concurrent", str(args.concurrent), "--device", str(args.device), "--teacher", args.teacher,
               "--student", args.student, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--warmup-steps", str(args.warmup_steps), "--threads", str(threads),
               *(f"--kdcore-runtime={key}={json.dumps(value)}" for key, value in args.kdcore_runtime.items())]
    processes = [subprocess.Popen(command) for _ in range(args.concurrent)]
    failed = [p.args for p in processes if p.wait() != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {args.concurrent} concurrent kdcore runs failed (see their output above)")
    return [json.loads(path.read_text()) for path in sorted(members.glob("result-*.json"))]


def concurrent_member(args) -> dict:
    """One process of :func:`time_concurrent`: warm up, wait for the others, time one epoch."""
    members: Path = args.member
    registry = load_registry_cached()
    checkpoint = members.parent / "teacher.safetensors"
    with tempfile.TemporaryDirectory(prefix="kd-step-member-") as tmp:
        time_kdcore(args, registry, checkpoint, args.warmup_steps, Path(tmp))
        (members / f"ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 600
        while len(list(members.glob("ready-*"))) < args.concurrent:
            if time.monotonic() > deadline:
                raise RuntimeError("the other concurrent runs did not get ready within 10 minutes")
            time.sleep(0.05)
        result = time_kdcore(args, registry, checkpoint, args.steps, Path(tmp))
    (members / f"result-{os.getpid()}.json").write_text(json.dumps(result))
    return result


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def print_table(r: dict) -> None:
    print(f"KD step: {r['teacher']} -> {r['student']}, batch {r['batch_size']}, {r['steps']} timed steps, "
          f"median of {r['repeats']}, on {r['device']}; reference DataLoader workers {r['workers']}")
    print(f"training FLOPs per image (teacher fwd + 3 x student fwd): {r['gflops_per_image']:.4f} GFLOP")
    rows = [("kdcore", f"{r['kdcore_images_per_s']:.1f}"),
            ("reference (peer-style)", f"{r['reference_images_per_s']:.1f}")]
    if "ceiling_images_per_s" in r:
        rows.append((f"ceiling at {r['peak_tflops']:g} TFLOP/s", f"{r['ceiling_images_per_s']:.0f}"))
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  images/s")
    for name, value in rows:
        print(f"{name:{width}}  {value:>8}")
    print(f"ratio kdcore/reference: {r['ratio']:.3f}")
    if "concurrent" in r:
        print(f"kdcore, {r['concurrent']} runs at once: {r['concurrent_images_per_s']:.1f} images/s in aggregate, "
              f"{r['concurrent_ratio']:.3f} x the reference"
              + ("" if r["concurrent_overlap"] else " (warning: their timed windows did not all overlap)"))
    if "kdcore_fraction_of_ceiling" in r:
        print(f"kdcore fraction of ceiling: {r['kdcore_fraction_of_ceiling']:.4f} "
              f"(reference {r['reference_fraction_of_ceiling']:.4f})")
    print(f"(untimed first steps: kdcore {r['kdcore_skipped_steps']}, reference {r['reference_skipped_steps']}; "
          f"kdcore's held-out evaluation not timed)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
