"""The Gaussian toy set: its p* against Bayes' rule computed from the densities."""

import torch
from torch.distributions import MultivariateNormal

from kdcore.api import DatasetContext
from kdcore.nn import Split


def build(registry, **params):
    spec = registry.get("dataset", "gaussian").spec
    return spec.builder()(spec.params(**params), DatasetContext(seed=0))


def test_defaults_are_the_papers_setting(registry):
    params = registry.get("dataset", "gaussian").spec.params()
    assert (params.num_classes, params.dim, params.delta_mu, params.noise_var) == (3, 30, 1.0, 6.0)
    assert (params.n_train, params.n_val, params.n_test) == (5000, 5000, 90000)


def test_true_probabilities_follow_bayes_rule(registry):
    data = build(registry, n_train=200, n_val=10, n_test=10, dim=5, num_classes=4, noise_var=2.0, delta_mu=1.5)
    split = data.train
    assert split.inputs.shape == (200, 5) and data.input_shape == (5,) and data.num_classes == 4
    # Recover the class means from the generator and check p* with the densities directly.
    generator = torch.Generator().manual_seed(0)
    means = torch.randint(-1, 2, (4, 5), generator=generator).double() * 1.5
    densities = torch.stack([
        MultivariateNormal(means[k], covariance_matrix=2.0 * torch.eye(5, dtype=torch.float64))
        .log_prob(split.inputs.double()).exp()
        for k in range(4)
    ], dim=1)
    posterior = densities / densities.sum(1, keepdim=True)  # uniform prior cancels
    assert torch.allclose(split.true_probs.double(), posterior, atol=1e-5)
    assert set(torch.unique(means).tolist()) <= {-1.5, 0.0, 1.5}


def test_data_seed_fixes_the_data_and_splits_differ(registry):
    first, second = build(registry, n_train=50, n_val=50, n_test=50), build(registry, n_train=50, n_val=50, n_test=50)
    assert torch.equal(first.train.inputs, second.train.inputs)
    assert not torch.equal(first.train.inputs, first.val.inputs)
    other = build(registry, n_train=50, n_val=50, n_test=50, data_seed=1)
    assert not torch.equal(first.train.inputs, other.train.inputs)


def test_bayes_accuracy_of_default_set_is_well_below_one(registry):
    """K = 3, Δμ = 1, σ² = 6 is a hard problem (Bayes accuracy ≈ 0.76), where teachers differ."""
    test = build(registry, n_train=10, n_val=0, n_test=20000).test
    bayes_accuracy = (test.true_probs.argmax(1) == test.labels).float().mean().item()
    assert 0.70 < bayes_accuracy < 0.82
    assert torch.bincount(test.labels).float().div(20000).sub(1 / 3).abs().max() < 0.02


def test_brier_score_ranks_models_as_their_mse_to_true_probabilities(registry):
    """E‖y − q‖² = E‖p* − q‖² + const: on held-out data the Brier score, which needs no p*,
    orders estimates of p* as their true squared distance does."""
    from kdcore.engine.accelerator import Accelerator, AcceleratorSettings
    from kdcore.engine.evaluate import evaluate

    test = build(registry, n_train=10, n_val=0, n_test=60000).test
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(test.true_probs.shape, generator=generator)

    indexed = Split(inputs=torch.arange(len(test))[:, None].float(), labels=test.labels, true_probs=test.true_probs)
    results = [
        evaluate(_Lookup(test.true_probs.log() + weight * noise), indexed, Accelerator.resolve(AcceleratorSettings(device="cpu")), batch_size=8192)
        for weight in (0.0, 0.3, 0.6, 1.0, 1.5)
    ]
    by_brier = sorted(range(5), key=lambda i: results[i]["brier"])
    by_mse = sorted(range(5), key=lambda i: results[i]["mse_to_true"])
    assert by_brier == by_mse == [0, 1, 2, 3, 4]
    constant = [r["brier"] - r["mse_to_true"] for r in results]
    assert max(constant) - min(constant) < 0.01


class _Lookup(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, index):
        return self.logits[index.long().flatten()]
