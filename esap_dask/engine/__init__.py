"""The engine: one pipeline mapped over many observations into one store.

:mod:`~esap_dask.engine.mapper` (``map_observations``: plan, lock, run, summarise),
:mod:`~esap_dask.engine.ledger` (what ran, what must run), :mod:`~esap_dask.engine.execute`
(the driver side: tasks on the cluster, progress, retries),
:mod:`~esap_dask.engine.task` (the worker side: compute a group of observations, write
its region and its ledger rows), :mod:`~esap_dask.engine.summary` (what a run did),
:mod:`~esap_dask.engine.provenance` (W3C PROV-JSON), :mod:`~esap_dask.engine.observations`
(ids and fingerprints). The engine names no instrument format: observation-index readers
plug in through the entry point group ``esap_dask.observation_indexes``.
"""
