"""Registration of the example plugin's components.

Keep this module free of torch imports: `kdcore plugins` imports it to list components.
The `build` strings point at the modules that do the work; kdcore imports them when needed.
"""

from pydantic import Field

from kdcore.api import DatasetSpec, DistillerSpec, Params, hookimpl


class LogitMatchingParams(Params):
    center: bool = Field(default=True, description="subtract each sample's mean logit first")


class TwoMoonsParams(Params):
    n_train: int = Field(default=1000, ge=2)
    n_test: int = Field(default=1000, ge=2)
    noise: float = Field(default=0.2, ge=0, description="std of the Gaussian noise added to the points")
    data_seed: int = Field(default=0, ge=0)


@hookimpl
def kdcore_distillers():
    yield DistillerSpec(
        name="logit-matching",
        summary="Mean squared error between student and teacher logits (Ba & Caruana, 2014)",
        params=LogitMatchingParams,
        build="kdcore_example.logit_matching:LogitMatching",
    )


@hookimpl
def kdcore_datasets():
    yield DatasetSpec(
        name="two-moons",
        summary="Two interleaving half circles in 2-D, with Gaussian noise",
        params=TwoMoonsParams,
        build="kdcore_example.moons:build_two_moons",
    )
