"""The paper's recipes under recipes/: every file validates against the installed plugins, expands
to the expected number of runs, and states the published hyperparameters (paper Sec. 5;
methods.md §1.3, §2; plugins/kdcore_distillers/published.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.config.loader import load_variants
from kdcore_distillers.published import DKD_BETA, PUBLISHED_CE_WEIGHTS, REVIEWKD_WEIGHT
from tests.conftest import published_weights

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

TABLE1_PAIRS = [
    ("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"),
    ("wrn-40-2", "wrn-16-2"), ("wrn-40-2", "wrn-40-1"), ("vgg13", "vgg8"),
    ("resnet50", "mobilenetv2"), ("resnet50", "vgg8"), ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"), ("wrn-40-2", "shufflenetv1"), ("vgg13", "mobilenetv2"),
]
TABLE2_PAIRS = [
    ("resnet110", "resnet20"), ("wrn-40-2", "wrn-16-2"), ("vgg13", "vgg8"), ("resnet50", "vgg8"),
    ("resnet32x4", "shufflenetv2"), ("vgg13", "mobilenetv2"),
]
REP_METHODS = ["at", "pkt", "sp", "cc", "rkd", "vid", "crd"]
LOWER_METHODS = ["reviewkd", "dkd", "hsakd"]  # Table 1's lower part, in the same files
BINARY = {
    "cifar10_0-4_vs_5-9": ("cifar10", [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]),
    "cifar100_20_vs_40": ("cifar100", [20], [40]),
    "cifar100_50_vs_70": ("cifar100", [50], [70]),
}
LABEL_BUDGETS = [500, 1000, 2000, 4000]
SMALL_LR_ARCHS = {"mobilenetv2", "mobilenetv2-x0.1", "shufflenetv1", "shufflenetv2"}

# kdcore architecture names -> RepDistiller names, the keys of published.DKD_BETA
REP_NAMES = {
    "resnet32x4": "resnet32x4", "resnet8x4": "resnet8x4", "resnet56": "resnet56", "resnet20": "resnet20",
    "resnet110": "resnet110", "resnet32": "resnet32", "wrn-40-2": "wrn_40_2", "wrn-16-2": "wrn_16_2",
    "wrn-40-1": "wrn_40_1", "vgg13": "vgg13", "vgg8": "vgg8", "mobilenetv2": "MobileNetV2",
    "resnet50": "ResNet50", "shufflenetv1": "ShuffleV1", "shufflenetv2": "ShuffleV2",
}
# pairs mdistiller publishes no beta for; the recipes document the value they chose
CHOSEN_DKD_BETA = {("resnet110", "resnet20"): 2.0, ("resnet50", "vgg8"): 8.0}

# The toy recipes (recipes/toy_*.yaml) belong to the toy study, the teacher lab's
# (recipes/teacher_lab_*.yaml) to no table of the paper: both are only validated here.
TOY_FILES = sorted(str(p.relative_to(RECIPES)) for p in [*RECIPES.glob("toy_*.yaml"), *RECIPES.glob("teacher_lab_*.yaml")])
# The newer methods' recipes are checked by tests/test_methods_recipes.py.
METHODS_FILES = sorted(str(p.relative_to(RECIPES)) for p in RECIPES.glob("cifar100/methods2022_*.yaml"))

EXPECTED_RUNS: dict[str, int] = {
    "digits.yaml": 40,
    "teacher_lab_toy.yaml": 7 * 3,  # 7 teachers (5 objectives, 2 options on ce) x 3 seeds
    "teacher_lab_digits.yaml": 7 * 5,  # the same 7 teachers x 5 seeds
    **{f"cifar100/table1_{t}_{s}.yaml": (7 + 3) * 2 * 5 for t, s in TABLE1_PAIRS},
    **{f"cifar100/table2_{t}_{s}.yaml": (7 + 1) * 2 * 5 for t, s in TABLE2_PAIRS},
    **{f"semisup/fig2_labels{n}.yaml": 2 * 3 for n in LABEL_BUDGETS},
    **{f"binary/table4_{d}.yaml": 3 * 2 * 5 for d in BINARY},
    **{f"binary/table4_{d}_kd.yaml": 2 * 5 for d in BINARY},
    **{f"imagenet_{p}_{o}.yaml": 1 for p in ("r34_r18", "r50_mnv2") for o in ("ce", "mse")},
    **{f"imagenet/imagenet_{p}_{m}.yaml": 2 for p in ("r34_r18", "r50_mnv2") for m in ("dkd", "crd_kd", "review_kd")},
}

_cache: dict[str, list] = {}

PUBLISHED = published_weights()


def variants(relative: str, registry) -> list:
    if relative not in _cache:
        _cache[relative] = load_variants(RECIPES / relative, [], registry)[1]
    return _cache[relative]


def recipes(relative: str, registry) -> list:
    return [v.recipe for v in variants(relative, registry)]


def test_every_recipe_file_is_covered():
    found = {
        str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.yaml") if "_shared" not in p.parts
    }
    assert found == set(EXPECTED_RUNS) | set(TOY_FILES) | set(METHODS_FILES)


@pytest.mark.parametrize("relative", TOY_FILES)
def test_toy_recipe_validates(relative, registry):
    assert len(variants(relative, registry)) >= 1


@pytest.mark.parametrize("relative", sorted(EXPECTED_RUNS))
def test_recipe_validates_with_the_expected_number_of_runs(relative, registry):
    runs = variants(relative, registry)
    assert len(runs) == EXPECTED_RUNS[relative]
    assert runs[0].recipe.name == Path(relative).stem
    assert len({v.id for v in runs}) == len(runs)


def _objectives_and_seeds(runs) -> set[tuple[str, int]]:
    return {(r.teacher.objective.name, r.seed) for r in runs}


def _assert_cifar_recipe(runs, seeds=range(5)):
    assert _objectives_and_seeds(runs) == {(o, s) for o in ("ce", "mse") for s in seeds}
    for r in runs:
        for stage in (r.teacher, r.student):
            assert stage.epochs == 240 and stage.batch_size == 64
            assert stage.schedule.name == "multistep"
            assert stage.schedule.milestones == [150, 180, 210] and stage.schedule.gamma == 0.1
            assert stage.optimizer.momentum == 0.9 and stage.optimizer.weight_decay == 5e-4
            assert not stage.optimizer.nesterov
            expected_lr = 0.01 if stage.arch.name in SMALL_LR_ARCHS else 0.05
            assert stage.optimizer.lr == expected_lr, stage.arch.name
        if r.teacher.objective.name == "mse":
            assert r.teacher.objective.params.reduction == "sum"
            assert r.teacher.objective.params.scale == 1.0


def _methods(runs) -> dict[str, list]:
    """Variant recipes grouped by the method in distiller slot 0."""
    grouped: dict[str, list] = {}
    for r in runs:
        grouped.setdefault(r.student.distillers[0].name, []).append(r)
    return grouped


def _assert_named_by_method(relative: str, registry) -> None:
    """Runs are named by the zip axis `method`: ``method=<distiller in slot 0>,objective=...,seed=...``."""
    for v in variants(relative, registry):
        assert v.id == (f"method={v.recipe.student.distillers[0].name},"
                        f"objective={v.recipe.teacher.objective.name},seed={v.recipe.seed}")
        assert v.overrides["method"] == v.recipe.student.distillers[0].name
        assert v.overrides["student.distillers.0"]["name"] == v.recipe.student.distillers[0].name


def _pair_settings(teacher: str, student: str) -> tuple[float, float]:
    """DKD's beta and ReviewKD's weight for a pair: published, else the recipes' documented choice."""
    pair = (REP_NAMES[teacher], REP_NAMES[student])
    published = DKD_BETA.get(pair)
    beta = published if published is not None else CHOSEN_DKD_BETA[(teacher, student)]
    return beta, REVIEWKD_WEIGHT.get(pair, PUBLISHED["reviewkd"])


@pytest.mark.parametrize("teacher,student", TABLE1_PAIRS)
def test_table1_pair(teacher, student, registry):
    """One file per column of Table 1: the upper part (REP form) and the lower part (ReviewKD,
    DKD with its per-pair beta, HSAKD), each method with CE weight 1 and no KD term."""
    relative = f"cifar100/table1_{teacher}_{student}.yaml"
    runs = recipes(relative, registry)
    _assert_cifar_recipe(runs)
    _assert_named_by_method(relative, registry)
    assert {(r.teacher.arch.name, r.student.arch.name) for r in runs} == {(teacher, student)}
    assert {r.data.name for r in runs} == {"cifar100"}
    grouped = _methods(runs)
    assert sorted(grouped) == sorted(REP_METHODS + LOWER_METHODS)
    beta, review_weight = _pair_settings(teacher, student)
    for method, members in grouped.items():
        assert len(members) == 10
        for r in members:
            (distiller,) = r.student.distillers  # REP form: no KD term
            assert r.student.ce_weight == 1.0
            if method in REP_METHODS:
                assert distiller.weight == PUBLISHED[method]
                assert PUBLISHED_CE_WEIGHTS[method] == 1.0
            elif method == "dkd":
                assert distiller.weight == PUBLISHED["dkd"] and distiller.params.beta == beta
                assert (distiller.params.alpha, distiller.params.temperature, distiller.params.warmup_epochs) == (1.0, 4.0, 20)
            elif method == "reviewkd":
                assert distiller.weight == review_weight and distiller.params.warmup_epochs == 20
            else:
                assert distiller.weight == PUBLISHED["hsakd"] and distiller.params.temperature == 3.0


def test_dkd_beta_examples(registry):
    assert DKD_BETA[("resnet32x4", "resnet8x4")] == 8.0
    beta = {
        pair: next(d for r in recipes(f"cifar100/table1_{pair[0]}_{pair[1]}.yaml", registry)
                   for d in r.student.distillers if d.name == "dkd").params.beta
        for pair in [("resnet32x4", "shufflenetv1"), ("resnet56", "resnet20"), ("vgg13", "mobilenetv2")]
    }
    assert beta == {("resnet32x4", "shufflenetv1"): 8.0, ("resnet56", "resnet20"): 2.0, ("vgg13", "mobilenetv2"): 6.0}


@pytest.mark.parametrize("teacher,student", TABLE2_PAIRS)
def test_table2_pair_adds_kd(teacher, student, registry):
    """One file per column of Table 2: each method of Table 1's upper part and ReviewKD, plus KD
    (weight 1, T 4) in slot 1, CE weight 1."""
    relative = f"cifar100/table2_{teacher}_{student}.yaml"
    runs = recipes(relative, registry)
    _assert_cifar_recipe(runs)
    _assert_named_by_method(relative, registry)
    assert {(r.teacher.arch.name, r.student.arch.name) for r in runs} == {(teacher, student)}
    grouped = _methods(runs)
    assert sorted(grouped) == sorted(REP_METHODS + ["reviewkd"])
    _, review_weight = _pair_settings(teacher, student)
    for method, members in grouped.items():
        assert len(members) == 10
        for r in members:
            first, kd = r.student.distillers
            assert first.weight == (review_weight if method == "reviewkd" else PUBLISHED[method])
            if method == "reviewkd":
                assert first.params.warmup_epochs == 20
            assert kd.name == "kd" and kd.weight == 1.0 and kd.params.temperature == 4.0
            assert r.student.ce_weight == 1.0


def test_mobilenet_and_shufflenet_students_train_at_lr_0_01(registry):
    for relative in ("cifar100/table1_resnet50_mobilenetv2.yaml", "cifar100/table2_resnet32x4_shufflenetv2.yaml",
                     "cifar100/table1_wrn-40-2_shufflenetv1.yaml", "binary/table4_cifar100_20_vs_40_kd.yaml"):
        for r in recipes(relative, registry):
            assert r.student.optimizer.lr == 0.01 and r.teacher.optimizer.lr == 0.05
    for r in recipes("cifar100/table1_resnet56_resnet20.yaml", registry):
        assert r.student.optimizer.lr == 0.05


@pytest.mark.parametrize("labels", LABEL_BUDGETS)
def test_semisupervised_fig2(labels, registry):
    runs = recipes(f"semisup/fig2_labels{labels}.yaml", registry)
    _assert_cifar_recipe(runs, seeds=range(3))
    for r in runs:
        assert r.data.name == "semisup-cifar10"
        assert r.data.params.labeled == labels
        assert r.student.arch.name == "resnet18"
        assert r.student.ce_weight == 0.1
        (kd,) = r.student.distillers
        assert kd.name == "kd" and kd.weight == 0.9 and kd.params.temperature == 4.0


@pytest.mark.parametrize("dataset", sorted(BINARY))
def test_binary_table4(dataset, registry):
    base, positive, negative = BINARY[dataset]
    features = recipes(f"binary/table4_{dataset}.yaml", registry)
    kd = recipes(f"binary/table4_{dataset}_kd.yaml", registry)
    for runs in (features, kd):
        _assert_cifar_recipe(runs)
        for r in runs:
            assert (r.teacher.arch.name, r.student.arch.name) == ("vgg13", "mobilenetv2-x0.1")
            assert r.data.name == "binary-cifar"
            assert (r.data.params.base, r.data.params.positive, r.data.params.negative) == (base, positive, negative)
    grouped = _methods(features)
    assert sorted(grouped) == ["at", "cc", "vid"]
    for method, members in grouped.items():
        assert all(r.student.distillers[0].weight == PUBLISHED[method] for r in members)
        assert all(r.student.ce_weight == 1.0 and len(r.student.distillers) == 1 for r in members)
    for r in kd:
        (distiller,) = r.student.distillers
        assert (distiller.name, distiller.weight, distiller.params.temperature) == ("kd", 0.9, 4.0)
        assert r.student.ce_weight == 0.1


IMAGENET_PAIRS = {"r34_r18": ("tv-resnet34", "tv-resnet18"), "r50_mnv2": ("tv-resnet50", "tv-mobilenet_v2")}


def _assert_imagenet(r, pair):
    assert r.data.name == "imagenet"
    assert (r.teacher.arch.name, r.student.arch.name) == IMAGENET_PAIRS[pair]
    for stage in (r.teacher, r.student):
        assert stage.epochs == 120 and stage.batch_size == 256
        assert stage.schedule.name == "multistep" and stage.schedule.milestones == [30, 60, 90]
        assert stage.optimizer.lr == 0.1 and stage.optimizer.weight_decay == 1e-4
        assert stage.optimizer.momentum == 0.9


@pytest.mark.parametrize("pair", sorted(IMAGENET_PAIRS))
@pytest.mark.parametrize("objective", ["ce", "mse"])
def test_imagenet_kd(pair, objective, registry):
    (r,) = recipes(f"imagenet_{pair}_{objective}.yaml", registry)
    _assert_imagenet(r, pair)
    assert r.teacher.objective.name == objective
    (kd,) = r.student.distillers
    assert (kd.name, kd.weight, kd.params.temperature, r.student.ce_weight) == ("kd", 0.5, 1.0, 0.5)


@pytest.mark.parametrize("pair", sorted(IMAGENET_PAIRS))
def test_imagenet_other_methods(pair, registry):
    dkd_runs = recipes(f"imagenet/imagenet_{pair}_dkd.yaml", registry)
    crd_runs = recipes(f"imagenet/imagenet_{pair}_crd_kd.yaml", registry)
    for runs in (dkd_runs, crd_runs):
        assert sorted(r.teacher.objective.name for r in runs) == ["ce", "mse"]
        for r in runs:
            _assert_imagenet(r, pair)
    for r in dkd_runs:
        (dkd,) = r.student.distillers
        assert r.student.ce_weight == 1.0
        assert (dkd.name, dkd.params.temperature, dkd.params.warmup_epochs) == ("dkd", 1.0, 1)
        assert dkd.params.beta == {"r34_r18": 0.5, "r50_mnv2": 2.0}[pair]
    for r in crd_runs:
        assert [d.name for d in r.student.distillers] == ["kd", "crd"]
        assert r.student.distillers[1].weight == PUBLISHED["crd"]
