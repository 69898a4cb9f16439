"""Cluster managers: where a run's Dask workers come from.

One module (or package) per facility type: :mod:`~esap_dask.deploy.local`,
:mod:`~esap_dask.deploy.jobqueue` (PBS, SGE, HTCondor, LSF; SLURM through
:mod:`esap_dask.deploy.slurm`), :mod:`~esap_dask.deploy.ssh`, :mod:`esap_dask.deploy.dirac`.
They receive a :class:`~esap_dask.deploy.facility.Facility` from the catalog above
(:mod:`esap_dask.catalogs.facilities`) and never import it; the engine reads them
through the :class:`~esap_dask.deploy.protocol.WorkerJobs` protocol. Shared by all:
TLS (:mod:`~esap_dask.deploy.tls`), containers, the worker environment, option checks,
walltimes and worker lifetimes (:mod:`~esap_dask.deploy.walltime`).
"""
