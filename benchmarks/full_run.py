"""Wall time of a CIFAR-100 KD run through kdcore's real path, projected to the paper's 240 epochs.

Writes a CIFAR-100 of random images in the official on-disk format (``cifar-100-python/``
pickles, 50,000 training and 10,000 test images by default) to a temporary folder, so that the
``cifar100`` dataset plugin loads it exactly as it loads the real one, then trains the student
stage of resnet32x4 → resnet8x4 KD (T = 4, KD weight 0.9, CE weight 0.1, batch 64, SGD lr 0.05,
the paper's schedule; the teacher is a randomly initialised resnet32x4 loaded from a checkpoint,
since a trained one costs the same time) for ``--epochs`` epochs, with evaluation on the test
split after every epoch, as a real run does.

Prints the seconds of every epoch as the run logged them (training and evaluation), and the
240-epoch time projected as: first epoch (compilation, warm-up) + 239 × the median of the
other epochs. Random images train as fast as real ones: the step does not look at pixel values.

    .venv/bin/python benchmarks/full_run.py --device cuda --epochs 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS.parent)]  # kd_step, and the tests' writer of the format
from kd_step import runtime_settings  # noqa: E402
from tests.vision.conftest import write_cifar100_files  # noqa: E402

from kdcore.api import ArchitectureContext  # noqa: E402
from kdcore.config.loader import load_variants  # noqa: E402
from kdcore.distill.run import Run  # noqa: E402
from kdcore.registry import load_registry  # noqa: E402
from kdcore.runs.layout import save_weights  # noqa: E402

PAPER_EPOCHS = 240


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs to train and time (default 4)")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runtime", action="append", default=[], metavar="KEY=VALUE",
                        help="a runtime setting of the recipe (YAML value), e.g. compile=false; repeatable")
    args = parser.parse_args(argv)
    args.runtime = runtime_settings(parser, args.runtime)
    if min(args.epochs, args.train_size, args.test_size, args.batch_size) < 1:
        parser.error("--epochs, --train-size, --test-size and --batch-size must be at least 1")
    return args


def recipe(args, data_root: Path, teacher_checkpoint: Path) -> dict:
    return {
        "name": "full-run-benchmark",
        "data": {"name": "cifar100", "params": {"root": str(data_root)}},
        "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1},
        "teacher": {"arch": {"name": args.teacher}, "checkpoint": str(teacher_checkpoint)},
        "student": {
            "arch": {"name": args.student},
            "ce_weight": 0.1,
            "distillers": [{"name": "kd", "weight": 0.9, "params": {"temperature": 4.0}}],
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "eval_batch_size": 1024,
        },
        "runtime": {"device": args.device, **args.runtime},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    registry = load_registry()
    with tempfile.TemporaryDirectory(prefix="kd-full-run-") as tmp:
        folder = Path(tmp)
        write_cifar100_files(folder / "data", train=args.train_size, test=args.test_size)
        spec = registry.get("architecture", args.teacher).spec
        teacher = spec.builder()(spec.params.model_validate({}), ArchitectureContext(100, (3, 32, 32)))
        save_weights(teacher, folder / "teacher.safetensors")
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(args, folder / "data", folder / "teacher.safetensors")))
        [variant] = load_variants(path, [], registry)[1]
        started = time.perf_counter()
        Run(variant.recipe, folder / "run", registry).execute()
        wall = time.perf_counter() - started
        log = [json.loads(line) for line in (folder / "run/student/metrics.jsonl").read_text().splitlines()]
    seconds = [record["seconds"] for record in log]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "epoch_seconds": seconds,
        "steady_epoch_seconds": steady,
        "projected_240_epoch_minutes": (seconds[0] + (PAPER_EPOCHS - 1) * steady) / 60,
        "wall_seconds": wall,
        "images_per_s": args.train_size / steady,
    }
    print(f"{args.teacher} -> {args.student} KD on a CIFAR-100-format set of {args.train_size} + {args.test_size} "
          f"images, batch {args.batch_size}, on {result['device']}")
    print("seconds per epoch (training + test evaluation): " + ", ".join(f"{s:.2f}" for s in seconds))
    print(f"steady epoch: {steady:.2f} s ({result['images_per_s']:.0f} training images/s); whole run "
          f"{wall:.1f} s including loading and the final evaluation")
    print(f"projected {PAPER_EPOCHS}-epoch run: {result['projected_240_epoch_minutes']:.1f} min "
          f"(first epoch + {PAPER_EPOCHS - 1} x steady epoch)")
    return result


if __name__ == "__main__":
    main()
