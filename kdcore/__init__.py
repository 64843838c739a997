"""kdcore: knowledge distillation built around teachers that estimate p*(y|x).

The kernel (this package) knows no concrete method, dataset, model or objective: those are
plugins discovered through the ``kdcore`` entry-point group. Plugin authors import from
:mod:`kdcore.api` (registration, cheap to import) and :mod:`kdcore.nn` (torch-side base classes).
"""

__version__ = "0.1.0"
