"""DIRAC: a grid cluster manager speaking the DiracX REST API.

:mod:`~esap_dask.deploy.dirac.cluster` (``DiracCluster``, ``open_dirac``),
:mod:`~esap_dask.deploy.dirac.jobs` (its grid jobs: submit, watch, kill),
:mod:`~esap_dask.deploy.dirac.diracx_client` (the REST client, JDLs, sandboxes).
"""
