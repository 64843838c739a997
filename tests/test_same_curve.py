"""The same-curve check (benchmarks/same_curve.py) trains both paths on tiny settings: both
curves are complete and falling, and the printed gap, spread and verdict are the ones computed
from the returned curves."""

import importlib
import math
import re
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_same_curve_returns_falling_curves_and_prints_what_it_returns(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # same_curve imports kd_step beside it
    same_curve = importlib.import_module("same_curve")
    epochs, seeds = 2, [0, 1]
    threads = torch.get_num_threads()
    result = same_curve.main([
        "--device", "cpu", "--teacher", "resnet8", "--student", "resnet8", "--epochs", str(epochs),
        "--teacher-epochs", "1", "--train-size", "256", "--test-size", "64", "--batch-size", "32",
        "--threads", "1",  # two threads stall for a minute where another process holds a core
    ])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads

    for side in ("kdcore", "reference"):
        for seed in seeds:
            curve = result[side][seed]
            assert len(curve) == epochs and all(math.isfinite(loss) for loss in curve), (side, seed, curve)
            assert curve[-1] < curve[0], f"{side} seed {seed} did not learn: {curve}"

    def largest_difference(a, b):
        return max(abs(x - y) for x, y in zip(a, b))

    gap = max(largest_difference(result["kdcore"][s], result["reference"][s]) for s in seeds)
    spread = max(largest_difference(result[side][0], result[side][1]) for side in ("kdcore", "reference"))
    assert result["gap"] == gap and result["spread"] == spread
    assert result["same_within_noise"] == (gap <= same_curve.TOLERANCE * spread)

    def printed(label: str) -> float:
        found = re.search(rf"^{re.escape(label)}\s+([0-9.]+)", out, re.MULTILINE)
        assert found, f"no '{label}' line in:\n{out}"
        return float(found.group(1))

    assert printed("gap    max |kdcore - reference|, same seed:") == round(gap, 4)
    assert printed("spread max |seed a - seed b|, same side:") == round(spread, 4)
    for epoch in range(epochs):
        row = re.search(rf"^{epoch + 1}\s+(.*)$", out, re.MULTILINE).group(1).split()
        expected = [result["kdcore"][s][epoch] for s in seeds] + [result["reference"][s][epoch] for s in seeds]
        assert [float(value) for value in row] == [round(value, 4) for value in expected]
    verdict = "verdict: same curve within noise" if result["same_within_noise"] else "verdict: NOT the same curve"
    assert verdict in out
