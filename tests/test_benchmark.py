"""The KD-step benchmark (benchmarks/kd_step.py) runs end to end on tiny settings and prints
both throughputs and their ratio."""

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_step.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kd_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kd_step_benchmark_prints_both_throughputs_and_their_ratio(capsys):
    benchmark = load_benchmark()
    result = benchmark.main([
        "--device", "cpu", "--teacher", "resnet8", "--student", "resnet8", "--steps", "2",
        "--batch-size", "8", "--workers", "0", "--warmup-steps", "1",
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
