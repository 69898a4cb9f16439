"""SLURM: job-array clusters, batch-job state, and the scheduler plugin that watches jobs.

:mod:`~esap_dask.deploy.slurm.cluster` (``SLURMArrayCluster``: one ``sbatch --array`` for N
workers), :mod:`~esap_dask.deploy.slurm.jobarray` (the array's tasks as workers),
:mod:`~esap_dask.deploy.slurm.jobstate` (``squeue``/``sacct`` into one job-state vocabulary),
:mod:`~esap_dask.deploy.slurm.batch_scheduler` (failed jobs reported to the run),
:mod:`~esap_dask.deploy.slurm.jobqueue_import` (dask-jobqueue, imported once).
"""
