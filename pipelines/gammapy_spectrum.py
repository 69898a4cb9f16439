"""gammapy-spectrum: gammapy's own 1D reduction per observation, into SpectrumDatasetOnOff arrays.

Per GADF observation file: ``SpectrumDatasetMaker`` (counts, exposure, edisp),
``ReflectedRegionsBackgroundMaker`` (reflected regions for full-enclosure IRFs;
``WobbleRegionsFinder`` and the On/Off radius from ``RAD_MAX`` for point-like IRFs) and
``SafeMaskMaker`` (``aeff-max``, 10 %), with the defaults of gammapy's spectral-analysis
tutorial. The science lives in :mod:`esap_dask.iact.spectrum`; the datasets come back as
gammapy objects::

    esap-dask run gammapy-spectrum --observations 'data/*.fits.gz' --store crab.zarr
    datasets = esap_dask.iact.read_datasets("crab.zarr")   # a gammapy Datasets

Needs the optional extra ``gammapy`` (``pip install 'esap-dask[gammapy]'``) where the
observations are reduced and read back; the catalog lists it without.
"""

from __future__ import annotations

from esap_dask import Pipeline
from esap_dask.iact.spectrum import PARAMETERS, spectrum_products, spectrum_schema

pipeline = Pipeline(
    name="gammapy-spectrum",
    version="1.0.0",
    description=(
        "gammapy's 1D spectral reduction per observation (SpectrumDatasetMaker, reflected or "
        "wobble Off regions, SafeMaskMaker aeff-max): SpectrumDatasetOnOff arrays along "
        "energy and energy_true, read back with esap_dask.iact.read_datasets."
    ),
    function=spectrum_products,
    parameters=PARAMETERS,
    schema=spectrum_schema,
    observations="GADF observation files with IRFs (.fits, .fits.gz)",
)
