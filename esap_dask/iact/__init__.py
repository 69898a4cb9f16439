"""IACT science: gammapy's 1D spectral reduction as a pipeline, its datasets read back,
and gammapy-style selection of the runs of an obs-index (:func:`select_observations`).

gammapy is the optional extra ``gammapy``; nothing here imports it at import time.
"""

from __future__ import annotations

from esap_dask.iact.gadf import select_observations
from esap_dask.iact.spectrum import read_datasets, spectrum_products, spectrum_schema

__all__ = ["read_datasets", "select_observations", "spectrum_products", "spectrum_schema"]
