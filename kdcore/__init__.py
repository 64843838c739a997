"""kdcore: knowledge distillation built around teachers that estimate p*(y|x).

The kernel (this package) knows no concrete method, dataset, model or objective: those are
plugins discovered through the ``kdcore`` entry-point group. Plugin authors import from
:mod:`kdcore.api` (registration, cheap to import) and :mod:`kdcore.nn` (torch-side base classes).
``kdcore.load(path)`` returns a trained network from its weights file, in eval mode.
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    """``kdcore.load`` (:func:`kdcore.export.load`), imported on first use, so that importing
    kdcore stays cheap (no torch)."""
    if name == "load":
        return importlib.import_module("kdcore.export").load
    raise AttributeError(f"module 'kdcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "load"])
