"""Sampling the Gaussian mixture and its exact Bayes class probabilities."""

import math

import torch

from kdcore.api import DatasetContext
from kdcore.nn import DatasetBundle, Split


def build_gaussian(params, ctx: DatasetContext) -> DatasetBundle:
    """y ~ uniform over K classes, x = μ_y + σ·ε with ε ~ N(0, I). With equal priors and a shared
    isotropic covariance, p*(k|x) = softmax_k(−‖x − μ_k‖² / 2σ²) exactly."""
    generator = torch.Generator().manual_seed(params.data_seed)
    means = torch.randint(-1, 2, (params.num_classes, params.dim), generator=generator).double()
    means *= params.delta_mu

    def sample(count: int) -> Split:
        labels = torch.randint(0, params.num_classes, (count,), generator=generator)
        noise = torch.randn(count, params.dim, generator=generator, dtype=torch.float64)
        inputs = means[labels] + math.sqrt(params.noise_var) * noise
        true_probs = bayes_probabilities(inputs, means, params.noise_var)
        return Split(inputs=inputs.float(), labels=labels, true_probs=true_probs.float())

    train, val, test = sample(params.n_train), sample(params.n_val), sample(params.n_test)
    return DatasetBundle(
        num_classes=params.num_classes,
        input_shape=(params.dim,),
        train=train,
        val=val if params.n_val else None,
        test=test,
    )


def bayes_probabilities(inputs: torch.Tensor, means: torch.Tensor, noise_var: float) -> torch.Tensor:
    squared_distances = torch.cdist(inputs, means).pow(2)
    return torch.softmax(-squared_distances / (2 * noise_var), dim=1)
