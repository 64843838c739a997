"""Published CIFAR-100 loss weights of the built-in distillers (torch-free, for recipes).

``PUBLISHED_WEIGHTS[name]`` is the recipe ``weight`` of distiller ``name`` (REP's ``-b``,
mdistiller's ``*_WEIGHT``, or HSAKD's unit weights); the distiller's own params already default
to the published temperatures, exponents and inner weights. ``PUBLISHED_CE_WEIGHTS[name]`` is
the weight of the student's cross-entropy in the same runs (REP's ``-r``). REP's CIFAR-100 runs
add no Hinton-KD term to these methods (``-a 0``), except KD itself and CRD+KD (KD weight 1).
"""

PUBLISHED_WEIGHTS: dict[str, float] = {
    "kd": 0.9,
    "fitnet": 100.0,
    "at": 1000.0,
    "sp": 3000.0,
    "cc": 0.02,
    "vid": 1.0,
    "rkd": 1.0,
    "pkt": 30000.0,
    "crd": 0.8,
    "dkd": 1.0,
    "reviewkd": 5.0,
    "hsakd": 1.0,
}

PUBLISHED_CE_WEIGHTS: dict[str, float] = {name: 1.0 for name in PUBLISHED_WEIGHTS} | {"kd": 0.1}

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
(resnet32x4 → resnet8x4 only) uses 5, ``PUBLISHED_WEIGHTS["reviewkd"]``. Other pairs were not
published."""
