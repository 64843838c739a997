"""The benchmarks run end to end on tiny settings: kd_step.py prints both throughputs, their
ratio and the aggregate of concurrent runs; full_run.py the epoch times and the projection."""

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_step.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kd_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kd_step_benchmark_prints_both_throughputs_their_ratio_and_the_concurrent_aggregate(capsys):
    benchmark = load_benchmark()
    result = benchmark.main([
        "--device", "cpu", "--teacher", "resnet8", "--student", "resnet8", "--steps", "2",
        "--batch-size", "8", "--workers", "0", "--warmup-steps", "1", "--concurrent", "2",
    ])
    out = capsys.readouterr().out

    def number(label: str) -> float:
        found = re.search(rf"^{re.escape(label)}\s+([0-9.]+)\s*$", out, re.MULTILINE)
        assert found, f"no '{label}' row in:\n{out}"
        return float(found.group(1))

    kdcore, reference = number("kdcore"), number("reference (peer-style)")
    ratio = float(re.search(r"^ratio kdcore/reference: ([0-9.]+)$", out, re.MULTILINE).group(1))
    assert kdcore > 0 and reference > 0
    assert abs(ratio - result["kdcore_images_per_s"] / result["reference_images_per_s"]) < 1e-3
    assert result["gflops_per_image"] > 0 and "ceiling_images_per_s" not in result  # no ceiling on CPU
    aggregate = re.search(r"^kdcore, 2 runs at once: ([0-9.]+) images/s in aggregate, ([0-9.]+) x the reference",
                          out, re.MULTILINE)
    assert aggregate and float(aggregate.group(1)) == round(result["concurrent_images_per_s"], 1) > 0
    assert float(aggregate.group(2)) == round(result["concurrent_ratio"], 3)
    assert result["concurrent_ratio"] == pytest.approx(result["concurrent_images_per_s"] / result["reference_images_per_s"])


def test_full_run_benchmark_reports_epoch_times_and_the_240_epoch_projection(capsys):
    spec = importlib.util.spec_from_file_location("full_run_benchmark", SCRIPT.parent / "full_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--device", "cpu", "--epochs", "2", "--teacher", "resnet8", "--student", "resnet8",
                          "--train-size", "128", "--test-size", "32", "--batch-size", "32"])
    out = capsys.readouterr().out
    first, steady = result["epoch_seconds"][0], result["steady_epoch_seconds"]
    assert len(result["epoch_seconds"]) == 2 and steady == result["epoch_seconds"][1] > 0
    assert result["projected_240_epoch_minutes"] == pytest.approx((first + 239 * steady) / 60)
    assert f"projected 240-epoch run: {result['projected_240_epoch_minutes']:.1f} min" in out
