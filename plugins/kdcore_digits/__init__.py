"""Real data on a CPU: scikit-learn's bundled handwritten digits (1,797 8×8 images, 10 classes)
and a small CNN family sized for them.

Registration only (no torch import here): the dataset lives in :mod:`kdcore_digits.data`, the
network in :mod:`kdcore_digits.cnn`. The dataset needs scikit-learn (``pip install
'kdcore[digits]'``); its images ship inside the wheel, nothing is downloaded.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from kdcore.api import ArchitectureSpec, DatasetSpec, Params, hookimpl

DIGITS_SAMPLES = 1797
"""Images in ``sklearn.datasets.load_digits``."""


def _resolve_size(value: int | float, total: int = DIGITS_SAMPLES) -> int:
    """A count as given, or a fraction in [0, 1) of ``total`` rounded to the nearest count."""
    return value if isinstance(value, int) else round(value * total)


class DigitsParams(Params):
    """Defaults: 540 test images (30%; a test top-1 near 98% is then known to about ±0.6
    points), 180 validation images (10%; per-epoch curves and best-epoch weights without
    touching the test split), the other 1,077 (60%) to train; shifts of ±1 pixel. Each split
    takes every class in proportion to its size (174 to 183 images per class)."""

    val_size: int | float = Field(
        default=180, ge=0,
        description="validation split: a count, or a fraction in [0, 1) of the 1,797 images",
    )
    test_size: int | float = Field(
        default=540, ge=0,
        description="test split: a count, or a fraction in [0, 1) of the 1,797 images",
    )
    split_seed: int = Field(
        default=0, ge=0, description="seed of the stratified split (independent of the run seed)"
    )
    shift: int = Field(
        default=1, ge=0, le=3,
        description="training augmentation: each image moved by a random whole number of pixels "
        "in [-shift, shift] along each axis, the uncovered border zero (blank); 0 for none",
    )

    @model_validator(mode="after")
    def _sizes_fit(self) -> "DigitsParams":
        for name in ("val_size", "test_size"):
            value = getattr(self, name)
            if isinstance(value, float) and value >= 1:
                raise ValueError(f"{name}: a fraction must be below 1 (or give a count, e.g. 300)")
        held_out = _resolve_size(self.val_size) + _resolve_size(self.test_size)
        if _resolve_size(self.test_size) < 10:
            raise ValueError("test_size: at least 10 images (one per class)")
        if held_out > DIGITS_SAMPLES - 10:
            raise ValueError(
                f"val_size + test_size = {held_out} images leave fewer than 10 of the "
                f"{DIGITS_SAMPLES} to train on"
            )
        return self


class DigitsCNNParams(Params):
    width: int = Field(
        default=32, ge=1,
        description="channels of the stem and the first stage; stages 2 and 3 have 2× and 4×",
    )
    depth: int = Field(default=1, ge=1, le=4, description="conv-BN-ReLU layers per stage")


def _cnn_taps(params: DigitsCNNParams) -> dict:
    last_bn = 3 * params.depth - 2  # index of the last BatchNorm in a stage's Sequential
    return {
        "stem": "stem",
        "stages": ("stage1", "stage2", "stage3"),
        "preact_stages": tuple(f"stage{i}.{last_bn}" for i in (1, 2, 3)),
        "pooled": "fc:input",
    }


@hookimpl
def kdcore_datasets():
    yield DatasetSpec(
        name="digits",
        summary="scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), stratified split",
        params=DigitsParams,
        build="kdcore_digits.data:build_digits",
    )


@hookimpl
def kdcore_architectures():
    yield ArchitectureSpec(
        name="digits-cnn",
        summary="Small CNN for 8x8 digits: stem + 3 stages (8x8, 4x4, 2x2) of width, 2x, 4x channels",
        params=DigitsCNNParams,
        build="kdcore_digits.cnn:build_digits_cnn",
        taps=_cnn_taps,
    )
