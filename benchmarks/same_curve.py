"""Does kdcore's fast path train to the same loss curve as a peer-style reference loop?

The speed issue lets kdcore feed and compute its KD step differently from the peers (uint8
images kept in memory and augmented batch-wise on the device; on a GPU also bf16 autocast,
channels-last and whatever else its runtime defaults turn on) on one condition: accuracy must
not change, i.e. both paths give the same loss curve within noise on the same seeds. This
script trains the same student from the same teacher both ways, on the same seeds, and compares
the per-epoch training loss. ``kd_step.py`` times the two paths; this checks what they learn.

**Data.** The random images of ``kd_step.py`` cannot be learnt: every loss curve would be flat,
and two flat curves agree whatever the paths do. Here each of the 100 classes has a fixed random
smooth colour pattern (a 4 × 4 grid of random colours upsampled bilinearly to 32 × 32, coarse
enough to survive the 4-pixel crop shifts), and an image is its class's pattern plus independent
pixel noise, stored as uint8 (N, 3, 32, 32) like kdcore's in-memory CIFAR. Test images share
the patterns and have fresh noise. Both sides see the same images.

**Teacher.** Trained once from scratch with cross-entropy by the reference loop (fp32,
``--teacher-epochs``), so that its soft targets carry what it learnt and KD is meaningful;
written with ``save_weights``. kdcore loads that file, the reference uses the same weights.

**Student, per seed S**, both sides with KD T = 4 (× T²) weight 0.9, CE weight 0.1, SGD lr 0.05
momentum 0.9 weight decay 5e-4, constant lr, batch ``--batch-size``, ``--epochs`` epochs:

* **kdcore**: :class:`kdcore.distill.run.Run` on ``kd_step.py``'s recipe with seed S and the runtime
  defaults of the device unless ``--kdcore-runtime`` overrides them (the settings in force are
  printed). Curve: ``train/loss`` of each epoch in ``student/metrics.jsonl``, the mean over the
  epoch's steps of the loss the optimiser minimises.
* **reference**: PIL images through torchvision RandomCrop(32, 4), RandomHorizontalFlip, ToTensor
  and Normalize in a shuffling DataLoader, fp32, the teacher in eval mode under ``no_grad``,
  ``0.1·CE + 0.9·KL(batchmean)·T²``. The student is built right after
  ``torch.manual_seed(stage_seed(S, "student-init"))``, as kdcore builds it, so both sides start
  from identical weights; shuffling and augmentation then draw from
  ``stage_seed(S, "student-data")``, through torch's global generator, so the batches differ from
  kdcore's, as they would between any two implementations. Curve: the mean over the epoch's
  steps of the same loss.

**Verdict.** With ``k_S(e)`` and ``r_S(e)`` the kdcore and reference losses of epoch e, seed S:

* gap = max over seeds S and epochs e of ``|k_S(e) − r_S(e)|``;
* spread = max over epochs e, over both sides, over pairs of seeds (a, b) of
  ``|k_a(e) − k_b(e)|`` and ``|r_a(e) − r_b(e)|``, the seed-to-seed noise;
* "same curve within noise" iff gap ≤ 1.5 × spread.

Why the factor 1.5: with few seeds the spread is itself one noisy draw. If the two paths were
the same process and epoch-to-epoch noise independent, gap > spread would happen half the time
with two seeds; gap > 1.5 × spread about one time in ten over 4 epochs (Monte Carlo with normal
noise), less since a seed's two runs share their initial weights. A real change of what is
learnt (a broken augmentation, a precision loss that slows learning) moves one side's loss the
same way on every seed and epoch; the mean signed difference ``k − r`` is printed to show that,
and the final test top-1 of every run too. Needs at least two seeds.

    .venv/bin/python benchmarks/same_curve.py                   # CPU: resnet20 -> resnet8, seeds 0 1
    .venv/bin/python benchmarks/same_curve.py --device cuda     # resnet32x4 -> resnet8x4
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from kd_step import (
    CE_WEIGHT,
    DATASET,
    IMAGE_SHAPE,
    KD_WEIGHT,
    LR,
    MOMENTUM,
    NUM_CLASSES,
    TEMPERATURE,
    WEIGHT_DECAY,
    PilImages,
    build_arch,
    kdcore_recipe,
    load_registry_cached,
    runtime_settings,
)
from kdcore.api import DatasetSpec
from kdcore.distill.run import Run
from kdcore.distill.settings import accelerator_settings, stage_seed
from kdcore.engine.accelerator import Accelerator, resolve_device
from kdcore.nn import DatasetBundle, Split
from kdcore.registry import PluginInfo, Registry
from kdcore.runs.layout import METRICS, save_weights
from kdcore_vision.datasets.cifar import CIFAR100
from kdcore_vision.transforms import CropFlipNormalize, Normalize

PATTERN_GRID = 4  # colour cells per side of a class pattern
PATTERN_CONTRAST = 80.0  # grey levels per unit of the upsampled random pattern
PIXEL_NOISE = 40.0  # standard deviation of each pixel's own noise, in grey levels
PATTERN_SEED, TRAIN_SEED, TEST_SEED = 10, 11, 12
TEACHER_SEED = 0  # the teacher is trained once, shared by every student seed
TOLERANCE = 1.5  # "within noise": gap <= TOLERANCE x spread (see the module docstring)


# --------------------------------------------------------------------------- data

def class_patterns() -> torch.Tensor:
    """One smooth random colour pattern per class, (100, 3, 32, 32), float, about unit scale."""
    generator = torch.Generator().manual_seed(PATTERN_SEED)
    grid = torch.randn(NUM_CLASSES, IMAGE_SHAPE[0], PATTERN_GRID, PATTERN_GRID, generator=generator)
    return F.interpolate(grid, size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False)


def pattern_images(patterns: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uint8 images (count, 3, 32, 32), each its class's pattern plus pixel noise, and
    their labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    noise = torch.randn(count, *IMAGE_SHAPE, generator=generator)
    images = 128 + PATTERN_CONTRAST * patterns[labels] + PIXEL_NOISE * noise
    return images.round().clamp(0, 255).to(torch.uint8), labels


def pattern_registry(base: Registry, train: Split, test: Split) -> Registry:
    """The installed plugins plus the pattern set, registered under ``kd_step.py``'s dataset
    name so that its recipe reads it, with the cifar100 plugin's batch transforms."""

    def build(params, ctx) -> DatasetBundle:
        return DatasetBundle(
            num_classes=NUM_CLASSES,
            input_shape=IMAGE_SHAPE,
            train=dataclasses.replace(train),  # kdcore may move a split's tensors to the device
            test=dataclasses.replace(test),
            train_transform=CropFlipNormalize(CIFAR100.mean, CIFAR100.std),
            eval_transform=Normalize(CIFAR100.mean, CIFAR100.std),
        )

    return base.with_component("dataset", DatasetSpec(name=DATASET, summary="learnable class patterns", build=build),
                               PluginInfo("same-curve", "benchmarks", "0"))


# --------------------------------------------------------------------------- reference

def peer_loader(split: Split, batch_size: int, train: bool, device: torch.device) -> DataLoader:
    """Images as peers read CIFAR: PIL images through torchvision transforms, in the main
    process (worker processes would change the speed only, which this script does not
    measure)."""
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(CIFAR100.mean, CIFAR100.std)])
    return DataLoader(PilImages(split.inputs, split.labels, transform), batch_size=batch_size, shuffle=train,
                      pin_memory=device.type == "cuda")


def train_reference(model: nn.Module, teacher: nn.Module | None, train: Split, epochs: int, batch_size: int,
                    data_seed: int, device: torch.device) -> list[float]:
    """The peer-style loop; returns the mean loss of each epoch. With a teacher, the KD loss
    ``0.1·CE + 0.9·KL(batchmean)·T²``; without one, cross-entropy (how the teacher is trained)."""
    torch.manual_seed(data_seed)  # the DataLoader's shuffle and torchvision's crops and flips
    loader = peer_loader(train, batch_size, train=True, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    if teacher is not None:
        teacher.eval()
    model.train()
    curve = []
    for _ in range(epochs):
        total = torch.zeros((), device=device)
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                kd = F.kl_div(F.log_softmax(logits / TEMPERATURE, dim=1),
                              F.softmax(teacher_logits / TEMPERATURE, dim=1),
                              reduction="batchmean") * TEMPERATURE**2
                loss = CE_WEIGHT * loss + KD_WEIGHT * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        curve.append(float(total) / len(loader))
    return curve


@torch.no_grad()
def top1(model: nn.Module, test: Split, batch_size: int, device: torch.device) -> float:
    """Test top-1 in percent, through the peers' evaluation pipeline (ToTensor, Normalize)."""
    model.eval()
    correct = 0
    for inputs, targets in peer_loader(test, batch_size, train=False, device=device):
        correct += int((model(inputs.to(device)).argmax(1) == targets.to(device)).sum())
    return 100 * correct / len(test)


# --------------------------------------------------------------------------- kdcore

def kdcore_curve(args, registry: Registry, teacher_checkpoint: Path, seed: int,
                 workdir: Path) -> tuple[list[float], float]:
    """kdcore's student stage for ``seed``: its per-epoch ``train/loss`` and final test top-1."""
    recipe = seeded_recipe(args, registry, teacher_checkpoint, seed)
    directory = workdir / f"kdcore-seed{seed}"
    summary = Run(recipe, directory, registry).execute()
    records = [json.loads(line) for line in (directory / "student" / METRICS).read_text().splitlines()]
    return [record["train/loss"] for record in records], summary["student"]["test"]["top1"]


def seeded_recipe(args, registry: Registry, teacher_checkpoint: Path, seed: int):
    """``kd_step.py``'s recipe (one epoch, seed 0) with this check's seed and epochs."""
    recipe = kdcore_recipe(args, registry, teacher_checkpoint)
    student = recipe.student.model_copy(update={"epochs": args.epochs})
    return recipe.model_copy(update={"name": "same-curve", "seed": seed, "student": student})


# --------------------------------------------------------------------------- comparison

def largest_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def compare(kdcore: dict[int, list[float]], reference: dict[int, list[float]]) -> dict:
    """The gap, the seed-to-seed spreads and the verdict defined in the module docstring."""
    seeds = list(kdcore)
    pairs = list(itertools.combinations(seeds, 2))
    gap = max(largest_difference(kdcore[s], reference[s]) for s in seeds)
    kdcore_spread = max(largest_difference(kdcore[a], kdcore[b]) for a, b in pairs)
    reference_spread = max(largest_difference(reference[a], reference[b]) for a, b in pairs)
    spread = max(kdcore_spread, reference_spread)
    differences = [k - r for s in seeds for k, r in zip(kdcore[s], reference[s])]
    return {
        "gap": gap,
        "spread": spread,
        "kdcore_spread": kdcore_spread,
        "reference_spread": reference_spread,
        "mean_difference": sum(differences) / len(differences),
        "same_within_noise": gap <= TOLERANCE * spread,
    }


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--teacher", help="default: resnet32x4 on CUDA, resnet20 on CPU")
    parser.add_argument("--student", help="default: resnet8x4 on CUDA, resnet8 on CPU")
    parser.add_argument("--epochs", type=int, help="student epochs per run; default 10 on CUDA, 4 on CPU")
    parser.add_argument("--teacher-epochs", type=int, help="default 10 on CUDA, 4 on CPU")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="at least two (default 0 1)")
    parser.add_argument("--train-size", type=int, help="training images; default 10240 on CUDA, 2048 on CPU")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--kdcore-runtime", action="append", default=[], metavar="KEY=VALUE",
                        help="a runtime setting of the kdcore recipe (YAML value), e.g. precision=fp32; "
                             "repeatable. Default: kdcore's own defaults for the device")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads during the check, restored afterwards (default: torch's); "
                             "1 keeps a CPU that other processes share from stalling on thread barriers")
    args = parser.parse_args(argv)
    args.kdcore_runtime = runtime_settings(parser, args.kdcore_runtime)
    args.device = resolve_device(args.device)
    cuda = args.device.type == "cuda"
    args.teacher = args.teacher or ("resnet32x4" if cuda else "resnet20")
    args.student = args.student or ("resnet8x4" if cuda else "resnet8")
    args.epochs = args.epochs or (10 if cuda else 4)
    args.teacher_epochs = args.teacher_epochs or (10 if cuda else 4)
    args.train_size = args.train_size or (10240 if cuda else 2048)
    if len(set(args.seeds)) < 2:
        parser.error("--seeds: give at least two distinct seeds; the noise floor is their spread")
    if min(args.epochs, args.teacher_epochs, args.train_size, args.test_size, args.batch_size,
           args.threads or 1) < 1:
        parser.error("--epochs, --teacher-epochs, --train-size, --test-size, --batch-size and --threads "
                     "must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = check(args)
    finally:
        torch.set_num_threads(threads)
    print_report(result)
    return result


def check(args: argparse.Namespace) -> dict:
    """Trains the teacher, then both students of every seed, and compares their curves."""
    device = args.device
    started = time.perf_counter()
    patterns = class_patterns()
    train = Split(*pattern_images(patterns, args.train_size, TRAIN_SEED))
    test = Split(*pattern_images(patterns, args.test_size, TEST_SEED))
    registry = pattern_registry(load_registry_cached(), train, test)
    kdcore_losses: dict[int, list[float]] = {}
    reference_losses: dict[int, list[float]] = {}
    kdcore_top1: dict[int, float] = {}
    reference_top1: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="same-curve-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(stage_seed(TEACHER_SEED, "teacher-init"))
        teacher = build_arch(registry, args.teacher).to(device)
        train_reference(teacher, None, train, args.teacher_epochs, args.batch_size,
                        stage_seed(TEACHER_SEED, "teacher-data"), device)
        teacher_top1 = top1(teacher, test, args.batch_size, device)
        teacher.requires_grad_(False)
        checkpoint = workdir / "teacher.safetensors"
        save_weights(teacher, checkpoint)
        log(f"teacher {args.teacher} trained: test top-1 {teacher_top1:.1f} % ({elapsed(started)})")
        runtime = Accelerator.resolve(accelerator_settings(seeded_recipe(args, registry, checkpoint, 0).runtime))
        for seed in args.seeds:
            kdcore_losses[seed], kdcore_top1[seed] = kdcore_curve(args, registry, checkpoint, seed, workdir)
            log(f"seed {seed}: kdcore done ({elapsed(started)})")
            torch.manual_seed(stage_seed(seed, "student-init"))
            student = build_arch(registry, args.student).to(device)
            reference_losses[seed] = train_reference(student, teacher, train, args.epochs, args.batch_size,
                                                     stage_seed(seed, "student-data"), device)
            reference_top1[seed] = top1(student, test, args.batch_size, device)
            log(f"seed {seed}: reference done ({elapsed(started)})")
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "teacher": args.teacher,
        "student": args.student,
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "seeds": list(args.seeds),
        "train_size": args.train_size,
        "test_size": args.test_size,
        "batch_size": args.batch_size,
        "kdcore_runtime": {field.name: getattr(runtime, field.name)
                           for field in dataclasses.fields(runtime) if field.name != "device"},
        "teacher_top1": teacher_top1,
        "kdcore": kdcore_losses,
        "reference": reference_losses,
        "kdcore_top1": kdcore_top1,
        "reference_top1": reference_top1,
        **compare(kdcore_losses, reference_losses),
        "seconds": time.perf_counter() - started,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"


def print_report(r: dict) -> None:
    seeds = r["seeds"]
    settings = ", ".join(f"{name} {value}" for name, value in r["kdcore_runtime"].items())
    print(f"Same-curve check: {r['teacher']} -> {r['student']}, {r['epochs']} epochs, batch {r['batch_size']}, "
          f"{r['train_size']} training / {r['test_size']} test images of 100 class patterns, "
          f"on {r['device']} ({r['threads']} threads)")
    print(f"kdcore runtime in force: {settings}; reference: fp32, PIL + torchvision transforms")
    print(f"teacher ({r['teacher_epochs']} epochs of CE): test top-1 {r['teacher_top1']:.1f} %")
    columns = [f"kdcore s{s}" for s in seeds] + [f"reference s{s}" for s in seeds]
    print(f"{'epoch':<12}" + "".join(f"  {c:>12}" for c in columns))
    for epoch in range(r["epochs"]):
        values = [r["kdcore"][s][epoch] for s in seeds] + [r["reference"][s][epoch] for s in seeds]
        print(f"{epoch + 1:<12}" + "".join(f"  {v:>12.4f}" for v in values))
    accuracies = [r["kdcore_top1"][s] for s in seeds] + [r["reference_top1"][s] for s in seeds]
    print(f"{'test top-1 %':<12}" + "".join(f"  {v:>12.1f}" for v in accuracies))
    print(f"gap    max |kdcore - reference|, same seed:  {r['gap']:.4f}")
    print(f"spread max |seed a - seed b|, same side:     {r['spread']:.4f} "
          f"(kdcore {r['kdcore_spread']:.4f}, reference {r['reference_spread']:.4f})")
    print(f"mean signed kdcore - reference:              {r['mean_difference']:+.4f}")
    verdict = "same curve within noise" if r["same_within_noise"] else "NOT the same curve within noise"
    relation = "<=" if r["same_within_noise"] else ">"
    print(f"verdict: {verdict} (gap {r['gap']:.4f} {relation} {TOLERANCE:g} x spread {r['spread']:.4f})")
    print(f"wall time: {r['seconds']:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
