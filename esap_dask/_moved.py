"""Old module paths that still import, with a :class:`DeprecationWarning`.

esap-dask's modules moved into wings (``engine``, ``store``, ``catalogs``, ``deploy``,
``iact``, ``testing``). A user's ``from esap_dask.gadf import read_events`` keeps working:
the finder below, first on :data:`sys.meta_path`, answers only for the old names in
:data:`MOVED` (before an editable install's finder could find a stale copy), warns and
hands back the new module itself, so that ``esap_dask.gadf is
esap_dask.iact.gadf`` and a monkeypatch through either name reaches the same code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MOVED", "install"]

#: old module -> new module, for names users import (pipelines, notebooks, scripts).
# (esap_dask.ledger, once an alias of esap_dask.engine.ledger, is the ledger() function now)
MOVED = {
    "esap_dask.gadf": "esap_dask.iact.gadf",
    "esap_dask.dl3": "esap_dask.iact.dl3",
    "esap_dask.showers": "esap_dask.iact.showers",
    "esap_dask.corsika": "esap_dask.iact.corsika",
    "esap_dask.synthetic": "esap_dask.iact.synthetic",
    "esap_dask.mapper": "esap_dask.engine.mapper",
    "esap_dask.observations": "esap_dask.engine.observations",
    "esap_dask.provenance": "esap_dask.engine.provenance",
    "esap_dask.lock": "esap_dask.store.lock",
    "esap_dask.facilities": "esap_dask.catalogs.facilities",
    "esap_dask.workflows": "esap_dask.catalogs.workflows",
    "esap_dask.service.testing": "esap_dask.testing.service",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there "
            "(the old name will be removed in a later release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported under its new name."""


def install() -> None:
    """Put the alias finder first on :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
