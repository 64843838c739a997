"""Network definitions, one module per family.

The CIFAR networks follow RepDistiller's ``models/`` (the ECCV paper's code uses the same
files): same layers, same initialisation and same parameter names, so that RepDistiller
checkpoints load with ``load_state_dict``. The features RepDistiller returns with
``is_feat=True`` are exposed as taps by module path (declared in ``kdcore_vision/__init__.py``),
with an ``nn.Identity`` named ``preact`` where a pre-ReLU tensor has no module of its own.

Pooling is global average pooling throughout; at 32×32 input it equals RepDistiller's
fixed-size pools (``AvgPool2d(8)``, ``avg_pool2d(out, 4)``...).
"""
