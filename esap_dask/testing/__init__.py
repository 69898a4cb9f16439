"""Helpers for tests and local trials, not used by the library itself.

:mod:`~esap_dask.testing.service` starts the UWS service in a subprocess;
:mod:`~esap_dask.testing.dirac_site` plays a grid site against a local DiracX server
(``python -m esap_dask.testing.dirac_site``, started by ``scripts/diracx.sh``).
"""
