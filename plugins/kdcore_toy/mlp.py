"""A plain ReLU multi-layer perceptron."""

from torch import nn

from kdcore.api import ArchitectureContext


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.layers(x.flatten(1)))


def build_mlp(params, ctx: ArchitectureContext) -> MLP:
    in_features = 1
    for size in ctx.input_shape:
        in_features *= size
    return MLP(in_features, list(params.hidden), ctx.num_classes)
