"""The recipes of the newer logit-based methods (recipes/cifar100/methods2022_*.yaml): both validate,
expand to 11 methods x 2 teacher objectives x 5 seeds, and every run carries the published
hyperparameters.

The expected values below were read from the authors' code and configs (docs/methods.md names
the file of each), not from the recipes; they are also checked against the plugin's own tables
(``published.py``, the specs' published weights and the params' defaults), so that a recipe, the
plugin and this table cannot drift apart unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.config.loader import load_variants
from kdcore.distill.store import teacher_key
from kdcore_distillers.published import (
    DKD_BETA,
    DKD_STANDARDIZED,
    KD_STANDARDIZED,
    PUBLISHED_CE_WEIGHTS,
    STANDARDIZED_CE_WEIGHTS,
    STANDARDIZED_WEIGHTS,
)
from tests.conftest import published_weights

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# recipe file -> (teacher, student) in kdcore's names, and the same pair in RepDistiller's names
# (the keys of published.py's per-pair tables)
PAIRS = {
    "cifar100/methods2022_resnet32x4_resnet8x4.yaml": (("resnet32x4", "resnet8x4"), ("resnet32x4", "resnet8x4")),
    "cifar100/methods2022_wrn-40-2_wrn-16-2.yaml": (("wrn-40-2", "wrn-16-2"), ("wrn_40_2", "wrn_16_2")),
}
# A Table 1 recipe with the same teacher architecture: its teachers are the ones these runs share.
SAME_TEACHERS = {
    "cifar100/methods2022_resnet32x4_resnet8x4.yaml": "cifar100/table1_resnet32x4_shufflenetv1.yaml",
    "cifar100/methods2022_wrn-40-2_wrn-16-2.yaml": "cifar100/table1_wrn-40-2_wrn-16-2.yaml",
}

MLKD_TEMPERATURES = [3.0, 5.0, 2.0, 6.0]  # after the base temperature (KD_ours.py: 4 or --base-temp, 3, 5, 2, 6)
# CTKD's curriculum and MLKD's levels, the same with and without logit standardisation
CTKD = {"t_start": 1.0, "t_range": 20.0, "raw_init": 1.0, "lambda_min": 0.0, "lambda_max": 1.0, "curriculum_epochs": 10}
MLKD = {"extra_temperatures": MLKD_TEMPERATURES, "strong_view_temperatures": 3, "confidence_percentile": 50.0,
        "strong_ce_weight": 0.1}

# label -> (distiller, recipe weight, CE weight, student lr, student epochs, params that must hold)
METHODS: dict[str, tuple[str, float, float, float, int, dict]] = {
    # Hinton KD in REP / mdistiller form (-r 0.1 -a 0.9, T 4)
    "kd": ("kd", 0.9, 0.1, 0.05, 240, {"temperature": 4.0, "scale_by_t2": True, "standardize": False}),
    # mdistiller DKD (alpha 1, T 4, warm-up 20, CE 1; beta per pair below)
    "dkd": ("dkd", 1.0, 1.0, 0.05, 240, {"alpha": 1.0, "temperature": 4.0, "warmup_epochs": 20, "standardize": False}),
    # hunto dist_cifar.yaml: kd dist_t4 (beta 1, gamma 1, tau 4), kd_loss_weight 2, ori_loss_weight 1
    "dist": ("dist", 2.0, 1.0, 0.05, 240, {"beta": 1.0, "gamma": 1.0, "temperature": 4.0}),
    # cls_KD res34_distill_res18_cifar.py: NKDLoss temp 3, gamma 3.5, added to CE unweighted
    "nkd": ("nkd", 1.0, 1.0, 0.05, 240, {"temperature": 3.0, "gamma": 3.5}),
    # zkxufo/TTM README: --add wttm --ttm_l 0.2 -a 4 (-r defaults to 1)
    "wttm": ("wttm", 4.0, 1.0, 0.05, 240, {"gamma": 0.2}),
    # zhengli97/CTKD run_cifar_distill.sh: -r 0.1 -a 0.9 -b 0, --t_start 1 --t_end 20,
    # --decay_max 0 --decay_min -1 --decay_loops 10; Global_T initialised to 1
    "ctkd": ("ctkd", 0.9, 0.1, 0.05, 240, {**CTKD, "standardize": False}),
    # MLKD configs/cifar100/ours/*.yaml (LR 0.025) and cfg.KD (T 4, CE 0.1, KD 0.9)
    "mlkd": ("mlkd", 1.0, 0.1, 0.025, 240, {**MLKD, "temperature": 4.0, "kd_weight": 0.9, "standardize": False}),
    # logit standardisation: KD (T and weight per pair below), CE 0.1 (cfg.KD.LOSS.CE_WEIGHT)
    "kd-ls": ("kd", None, 0.1, 0.05, 240, {"scale_by_t2": True, "standardize": True}),
    # DKD (T, weight and beta per pair below), alpha 1, warm-up 20, CE 1 (cfg.DKD.CE_WEIGHT)
    "dkd-ls": ("dkd", None, 1.0, 0.05, 240, {"alpha": 1.0, "warmup_epochs": 20, "standardize": True}),
    # LS's CTKD/scripts/run_cifar_distill.sh: -r 0.1 -a 9, the learnt temperature as CTKD's
    "ctkd-ls": ("ctkd", 9.0, 0.1, 0.05, 240, {**CTKD, "standardize": True}),
    # LS's configs/cifar100/mlkd/*.yaml (LR 0.025, EPOCHS 480) with --base-temp 2 --kd-weight 9
    "mlkd-ls": ("mlkd", 1.0, 0.1, 0.025, 480, {**MLKD, "temperature": 2.0, "kd_weight": 9.0, "standardize": True}),
}

# Per pair (RepDistiller names): DKD's beta (mdistiller configs), KD + LS (T, weight) and
# DKD + LS (T, weight, beta) from the names of the logit-standardisation logs
# (logs/KD/kd,T,S,T_base,W.txt and logs/DKD/dkd,T,S,T_base,W[,beta].txt).
PER_PAIR = {
    ("resnet32x4", "resnet8x4"): {"dkd_beta": 8.0, "kd-ls": (2.0, 9.0), "dkd-ls": (2.0, 9.0, 8.0)},
    ("wrn_40_2", "wrn_16_2"): {"dkd_beta": 6.0, "kd-ls": (2.0, 9.0), "dkd-ls": (2.0, 12.0, 2.0)},
}

_cache: dict[str, list] = {}


def variants(relative: str, registry) -> list:
    if relative not in _cache:
        _cache[relative] = load_variants(RECIPES / relative, [], registry)[1]
    return _cache[relative]


def method_of(variant) -> str:
    """The entry's label, read from the run's id (``method=<label>``)."""
    (label,) = [part.removeprefix("method=") for part in variant.id.split(",") if part.startswith("method=")]
    return label


def test_the_expected_values_agree_with_the_plugin_tables(registry):
    """The table above against published.py, the specs' published weights and the params'
    defaults: a plain entry is the method as the plugin publishes it."""
    published = published_weights()
    for label, (name, weight, ce_weight, _, _, params) in METHODS.items():
        params_model = registry.get("distiller", name).spec.params
        if label.endswith("-ls"):
            if name in STANDARDIZED_CE_WEIGHTS:
                assert ce_weight == STANDARDIZED_CE_WEIGHTS[name], label
            defaults = params_model(standardize=True).model_dump()  # T 2 (and MLKD's kd_weight 9)
        else:
            assert weight == published[name], label
            assert ce_weight == PUBLISHED_CE_WEIGHTS[name], label
            defaults = params_model().model_dump()
        assert {key: defaults[key] for key in params} == params, label
    assert STANDARDIZED_WEIGHTS == {"kd": 9.0, "dkd": 9.0}
    for pair, values in PER_PAIR.items():
        assert DKD_BETA[pair] == values["dkd_beta"]
        assert KD_STANDARDIZED[pair] == values["kd-ls"]
        assert DKD_STANDARDIZED[pair] == values["dkd-ls"]


@pytest.mark.parametrize("relative", sorted(PAIRS))
def test_recipe_validates_with_11_methods_x_2_objectives_x_5_seeds(relative, registry):
    runs = variants(relative, registry)
    assert len(runs) == len(METHODS) * 2 * 5 == 110
    assert len({v.id for v in runs}) == len(runs)
    assert {v.recipe.name for v in runs} == {Path(relative).stem}
    by_method: dict[str, set] = {}
    for v in runs:
        by_method.setdefault(method_of(v), set()).add((v.recipe.teacher.objective.name, v.recipe.seed))
    assert by_method == {label: {(o, s) for o in ("ce", "mse") for s in range(5)} for label in METHODS}


@pytest.mark.parametrize("relative", sorted(PAIRS))
def test_every_run_has_the_published_hyperparameters(relative, registry):
    (teacher, student), rep_pair = PAIRS[relative]
    per_pair = PER_PAIR[rep_pair]
    for v in variants(relative, registry):
        r = v.recipe
        label = method_of(v)
        name, weight, ce_weight, lr, epochs, params = METHODS[label]
        assert (r.teacher.arch.name, r.student.arch.name) == (teacher, student)
        assert r.data.name == "cifar100"
        (distiller,) = r.student.distillers
        assert distiller.name == name, v.id
        assert r.student.ce_weight == ce_weight, v.id
        assert (r.student.optimizer.lr, r.student.epochs) == (lr, epochs), v.id
        got = distiller.params.model_dump()
        assert {key: got[key] for key in params} == params, v.id
        if label == "dkd":
            assert got["beta"] == per_pair["dkd_beta"]
        elif label == "kd-ls":
            weight = per_pair["kd-ls"][1]
            assert got["temperature"] == per_pair["kd-ls"][0]
        elif label == "dkd-ls":
            temperature, weight, beta = per_pair["dkd-ls"]
            assert (got["temperature"], got["beta"]) == (temperature, beta)
        elif name == "mlkd":
            assert got["strong_ce_weight"] == r.student.ce_weight  # MLKD's CE weight, on both views
        assert distiller.weight == weight, v.id


@pytest.mark.parametrize("relative", sorted(PAIRS))
def test_both_stages_keep_the_authors_cifar_schedule(relative, registry):
    """Batch 64, SGD momentum 0.9 without Nesterov, wd 5e-4, x0.1 at 150/180/210 for every
    method; the teacher is the shared CIFAR-100 one (240 epochs at lr 0.05), whatever the entry."""
    for v in variants(relative, registry):
        r = v.recipe
        for stage in (r.teacher, r.student):
            assert stage.batch_size == 64
            assert stage.schedule.name == "multistep"
            assert stage.schedule.milestones == [150, 180, 210] and stage.schedule.gamma == 0.1
            assert stage.optimizer.momentum == 0.9 and stage.optimizer.weight_decay == 5e-4
            assert not stage.optimizer.nesterov
        assert (r.teacher.epochs, r.teacher.optimizer.lr) == (240, 0.05)
        if r.teacher.objective.name == "mse":
            assert r.teacher.objective.params.reduction == "sum" and r.teacher.objective.params.scale == 1.0


@pytest.mark.parametrize("relative", sorted(PAIRS))
def test_the_runs_share_the_table1_teachers(relative, registry):
    """No entry touches the teacher: the 110 runs need 10 teachers, the same ones as the paper's
    Table 1 recipe with that teacher (one trained teacher per objective and seed)."""
    ours = {teacher_key(v.recipe, registry) for v in variants(relative, registry)}
    table1 = {teacher_key(v.recipe, registry) for v in variants(SAME_TEACHERS[relative], registry)}
    assert len(ours) == 10
    assert ours == table1
