"""The paper's synthetic Gaussian mixture with known p*(y|x), and a plain MLP."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kdcore.api import ArchitectureSpec, DatasetSpec, DistillerSpec, Params, hookimpl


class GaussianParams(Params):
    """Defaults: the paper's Sec. 4.2 set (K = 3 as its text says; see methods.md §1.6)."""

    num_classes: int = Field(default=3, ge=2, description="K")
    dim: int = Field(default=30, ge=1, description="input dimension")
    delta_mu: float = Field(default=1.0, gt=0, description="class-mean entries are in {-1, 0, 1}·delta_mu")
    noise_var: float = Field(default=6.0, gt=0, description="variance σ² of the isotropic noise")
    n_train: int = Field(default=5000, ge=1)
    n_val: int = Field(default=5000, ge=0)
    n_test: int = Field(default=90000, ge=1)
    data_seed: int = Field(default=0, ge=0, description="seed of the means and samples (not the run seed)")


class MLPParams(Params):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default=[128, 128], min_length=1, description="hidden layer sizes")


class NoisyBayesParams(Params):
    """How the student's targets p̃ are made from p* (the paper's Sec. 4.2.1, Set 1)."""

    kind: Literal["mix", "additive", "temperature", "dirichlet"] = Field(
        default="additive",
        description="mix: level·onehot(y) + (1−level)·p*; additive: p* + N(0, level²), clipped at "
        "1e-6 and renormalised; temperature: p* ** (1/level), renormalised; dirichlet: a draw from "
        "Dirichlet(level·p*), whose mean is p*",
    )
    level: float = Field(default=0.1, ge=0, description="strength of the perturbation (see kind)")
    noise_seed: int = Field(default=0, ge=0, description="seed of the random perturbations")

    @model_validator(mode="after")
    def _level_fits_kind(self) -> "NoisyBayesParams":
        if self.kind == "mix" and self.level > 1:
            raise ValueError("mix needs a level in [0, 1]")
        if self.kind in ("temperature", "dirichlet") and self.level == 0:
            raise ValueError(f"{self.kind} needs a level above 0")
        return self


def _mlp_taps(params: MLPParams) -> dict:
    last_hidden = f"layers.{2 * len(params.hidden) - 1}"
    return {
        "stages": tuple(f"layers.{2 * i + 1}" for i in range(len(params.hidden))),
        "pooled": last_hidden,
    }


@hookimpl
def kdcore_datasets():
    yield DatasetSpec(
        name="gaussian",
        summary="Gaussian mixture with known Bayes probabilities p*(y|x) (paper Sec. 4.2)",
        params=GaussianParams,
        build="kdcore_toy.gaussian:build_gaussian",
    )


@hookimpl
def kdcore_distillers():
    yield DistillerSpec(
        name="noisy-bayes",
        summary="KL to a perturbed copy of the true p*(y|x), no teacher needed (paper Sec. 4.2.1)",
        params=NoisyBayesParams,
        build="kdcore_toy.noisy_bayes:NoisyBayes",
    )


@hookimpl
def kdcore_architectures():
    yield ArchitectureSpec(
        name="mlp",
        summary="Multi-layer perceptron with ReLU (default 128-128 hidden units)",
        params=MLPParams,
        build="kdcore_toy.mlp:build_mlp",
        taps=_mlp_taps,
    )
