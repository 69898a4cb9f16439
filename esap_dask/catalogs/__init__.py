"""The catalogs: facilities (where workers come from) and pipelines (what they run).

:mod:`~esap_dask.catalogs.facilities` finds a facility's YAML file and dispatches it to its
cluster manager in :mod:`esap_dask.deploy`; :mod:`~esap_dask.catalogs.workflows` finds and
loads pipelines (files and the entry point group ``esap_dask.pipelines``).
"""
