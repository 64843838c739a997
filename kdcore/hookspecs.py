"""The hook specifications: one argument-free hook per kind of component.

Each hook yields spec objects from :mod:`kdcore.api`; the registry collects them, checks their
type and rejects duplicate names.
"""

from collections.abc import Iterable

import pluggy

from kdcore.api import ArchitectureSpec, DatasetSpec, DistillerSpec, ObjectiveSpec

hookspec = pluggy.HookspecMarker("kdcore")

HOOK_FOR_KIND = {
    "objective": "kdcore_objectives",
    "distiller": "kdcore_distillers",
    "dataset": "kdcore_datasets",
    "architecture": "kdcore_architectures",
}


class KdcoreSpecs:
    @hookspec
    def kdcore_objectives(self) -> Iterable[ObjectiveSpec]:
        """Register teacher objectives (losses on logits and labels)."""
        yield from ()

    @hookspec
    def kdcore_distillers(self) -> Iterable[DistillerSpec]:
        """Register distillation methods."""
        yield from ()

    @hookspec
    def kdcore_datasets(self) -> Iterable[DatasetSpec]:
        """Register datasets."""
        yield from ()

    @hookspec
    def kdcore_architectures(self) -> Iterable[ArchitectureSpec]:
        """Register network architectures with their feature taps."""
        yield from ()
