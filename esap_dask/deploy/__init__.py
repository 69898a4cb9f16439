"""Cluster managers, one module per facility type (see :mod:`esap_dask.catalogs.facilities`)."""
