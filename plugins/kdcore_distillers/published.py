"""Published CIFAR-100 values of the built-in distillers that are not params of one distiller
(torch-free, for recipes and their tests).

Each distiller's published loss weight (REP's ``-b``, mdistiller's ``*_WEIGHT``, HSAKD's unit
weights, and the weights of the newer methods' authors) is its spec's ``published_weight``,
the recipe's default ``weight``; its own params default to the published temperatures,
exponents and inner weights. ``PUBLISHED_CE_WEIGHTS[name]`` is the weight of the student's
cross-entropy in the same runs (REP's ``-r``). REP's CIFAR-100 runs add no Hinton-KD term to
these methods (``-a 0``), except KD itself and CRD+KD (KD weight 1).
"""

PUBLISHED_CE_WEIGHTS: dict[str, float] = {
    name: 1.0 for name in ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "crd", "dkd", "reviewkd", "hsakd",
                           "dist", "nkd", "wttm")
} | {
    "kd": 0.1,
    "ctkd": 0.1,  # CTKD run_cifar_distill.sh -r 0.1
    "mlkd": 0.1,  # MLKD cfg.KD.LOSS.CE_WEIGHT (weak view)
}

DKD_BETA: dict[tuple[str, str], float] = {
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("ResNet50", "MobileNetV2"): 8.0,
    ("resnet32x4", "ShuffleV1"): 8.0,
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("wrn_40_2", "ShuffleV1"): 8.0,
}
"""DKD's β per (teacher, student) pair in mdistiller's CIFAR-100 configs (REP model names)."""

REVIEWKD_WEIGHT: dict[tuple[str, str], float] = {
    ("wrn_40_2", "wrn_16_2"): 5.0,
    ("wrn_40_2", "wrn_40_1"): 5.0,
    ("wrn_40_2", "ShuffleV1"): 5.0,
    ("resnet32x4", "resnet8x4"): 5.0,
    ("resnet32x4", "ShuffleV1"): 5.0,
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("resnet56", "resnet20"): 0.6,
    ("resnet110", "resnet32"): 1.0,
}
"""ReviewKD's loss weight (the recipe ``weight``) per (teacher, student) pair, from the original
repository's ``CIFAR-100/script/reviewKD.sh`` (REP model names); mdistiller's CIFAR-100 config
(resnet32x4 → resnet8x4 only) uses 5, the spec's published weight. Other pairs were not
published."""

STANDARDIZED_WEIGHTS: dict[str, float] = {"kd": 9.0, "dkd": 9.0}
"""Recipe ``weight`` of ``kd`` and ``dkd`` with ``standardize: true`` in the logit-standardisation
paper's CIFAR-100 runs (sunshangquan/logit-standardization-KD, ``tools/train.py``:
``--kd-weight`` 9, which for DKD multiplies α and β, i.e. the whole term); the temperature is
then 2 (``--base-temp``, the params' default with ``standardize``). Per pair:
:data:`KD_STANDARDIZED`, :data:`DKD_STANDARDIZED`."""

STANDARDIZED_CE_WEIGHTS: dict[str, float] = {"kd": 0.1, "dkd": 1.0}
"""The cross-entropy weight of the same runs (``KD.LOSS.CE_WEIGHT`` 0.1, ``DKD.CE_WEIGHT`` 1)."""

KD_STANDARDIZED: dict[tuple[str, str], tuple[float, float]] = {
    ("resnet32x4", "resnet8x4"): (2.0, 9.0),
    ("vgg13", "vgg8"): (3.0, 9.0),
    ("wrn_40_2", "wrn_40_1"): (2.0, 9.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 9.0),
    ("resnet56", "resnet20"): (2.0, 9.0),
    ("resnet110", "resnet32"): (2.0, 9.0),
    ("resnet110", "resnet20"): (4.0, 12.0),
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0),
    ("resnet32x4", "wrn_16_2"): (3.0, 9.0),
    ("resnet32x4", "wrn_40_2"): (3.0, 9.0),
    ("wrn_40_2", "resnet8x4"): (2.0, 9.0),
    ("wrn_40_2", "MobileNetV2"): (3.0, 9.0),
    ("vgg13", "MobileNetV2"): (3.0, 9.0),
    ("ResNet50", "MobileNetV2"): (3.0, 1.0),
}
"""(temperature, recipe weight) of ``kd`` with ``standardize: true`` per (teacher, student)
pair, read from the names of the logit-standardisation repository's CIFAR-100 logs
(``logs/KD/kd,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT.txt``, linked from its README)."""

DKD_STANDARDIZED: dict[tuple[str, str], tuple[float, float, float]] = {
    ("resnet32x4", "resnet8x4"): (2.0, 9.0, 8.0),
    ("vgg13", "vgg8"): (2.0, 15.0, 2.0),
    ("wrn_40_2", "wrn_40_1"): (2.0, 12.0, 2.0),
    ("wrn_40_2", "wrn_16_2"): (2.0, 12.0, 2.0),
    ("resnet56", "resnet20"): (3.0, 18.0, 2.0),
    ("resnet110", "resnet32"): (2.0, 15.0, 2.0),
    ("resnet110", "resnet20"): (2.0, 15.0, 2.0),
    ("resnet32x4", "ShuffleV2"): (2.0, 9.0, 8.0),
    ("resnet32x4", "wrn_16_2"): (2.0, 9.0, 2.0),
    ("resnet32x4", "wrn_40_2"): (2.0, 9.0, 8.0),
    ("wrn_40_2", "resnet8x4"): (2.0, 18.0, 2.0),
    ("wrn_40_2", "MobileNetV2"): (2.0, 15.0, 2.0),
    ("vgg13", "MobileNetV2"): (3.0, 9.0, 2.0),
    ("ResNet50", "MobileNetV2"): (2.0, 15.0, 2.0),
}
"""(temperature, recipe weight, β) of ``dkd`` with ``standardize: true`` per pair, from the log
names ``logs/DKD/dkd,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT[,BETA].txt``; where the name
gives no β it is the pair's config value (the DKD default 8, for resnet32x4 → resnet8x4 and
→ ShuffleV2). α stays 1. The names do not say whether β is before or after the ``--kd-weight``
product; it is read as before (``train.py`` multiplies the config's β, 2 to 8 as usual)."""
