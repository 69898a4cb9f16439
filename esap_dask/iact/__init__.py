"""IACT science: gammapy's 1D spectral reduction as a pipeline, its datasets read back.

gammapy is the optional extra ``gammapy``; nothing here imports it at import time.
"""

from __future__ import annotations

from esap_dask.iact.spectrum import read_datasets, spectrum_products, spectrum_schema

__all__ = ["read_datasets", "spectrum_products", "spectrum_schema"]
