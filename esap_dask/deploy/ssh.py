"""The ``ssh`` facility: a scheduler and workers started over SSH (distributed's SSHCluster).

This is the Rosetta pattern of the seed project: a remote platform reached over
SSH whose workers may run in a container (the facility's ``runtimeengine``
wraps the remote Python, see :mod:`esap_dask.deploy.containers`). The first host
runs the scheduler, the others the workers.

TLS is on by default, with a per-cluster CA (:mod:`esap_dask.deploy.tls`): the
remote scheduler and workers find the credential files by path, so the
credential directory (``tls_directory``) must be on a file system the remote
hosts share with the client (the home directory on most sites). Only paths, never
key material, travel on the remote command line. The remote nannies inherit the
client's Dask configuration, esap-dask's worker environment
(:data:`esap_dask.config.WORKER_ENVIRONMENT` in ``distributed.nanny.pre-spawn-environ``)
with it; a container gets the variables with ``--env`` as well.

Facility options::

    options:
      hosts: [login.example.org, node1.example.org]
      port: 22
      username: astro
      client_keys: [~/.ssh/id_ed25519]
      known_hosts: ~/.ssh/known_hosts
      n_workers: 2                    # worker processes per worker host
      nthreads: 1
      remote_python: /opt/conda/bin/python
      dashboard_address: 127.0.0.1:0  # on the scheduler host
      tls: true
      tls_directory: ~/.esap-dask/tls/rosetta
      container: {image: ..., binds: [...], env: {...}}
"""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path
from typing import Any

import dask.config
from distributed.deploy.spec import SpecCluster

import esap_dask.config  # noqa: F401 - the esap.* defaults this module reads
from esap_dask.deploy.containers import facility_python
from esap_dask.deploy.facility import Facility, FacilityError
from esap_dask.deploy.tls import new_cluster_security, security_directory

__all__ = ["open_ssh"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CONNECT_KEYS = ("port", "username", "client_keys", "known_hosts", "config")


def _connect_options(opts: dict[str, Any]) -> dict[str, Any]:
    connect = dict(opts.pop("connect_options", None) or {})
    for key in _CONNECT_KEYS:
        if key in opts:
            connect[key] = opts.pop(key)
    if "client_keys" in connect:
        keys = connect["client_keys"]
        keys = [keys] if isinstance(keys, str) else keys
        connect["client_keys"] = [str(Path(k).expanduser()) for k in keys]
    if isinstance(connect.get("known_hosts"), str):
        connect["known_hosts"] = str(Path(connect["known_hosts"]).expanduser())
    return connect


def _tls_config(security: Any) -> dict[str, Any]:
    """Dask config (paths only) that makes remote scheduler and workers use ``security``."""
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": security.tls_ca_file,
        "distributed.comm.tls.scheduler.cert": security.tls_scheduler_cert,
        "distributed.comm.tls.scheduler.key": security.tls_scheduler_key,
        "distributed.comm.tls.worker.cert": security.tls_worker_cert,
        "distributed.comm.tls.worker.key": security.tls_worker_key,
        "distributed.comm.tls.client.cert": security.tls_client_cert,
        "distributed.comm.tls.client.key": security.tls_client_key,
    }


def open_ssh(facility: Facility, options: dict[str, Any]) -> SpecCluster:
    """Start a scheduler and workers over SSH on the facility's hosts.

    Parameters
    ----------
    facility
        A catalog entry of type ``ssh``.
    options
        See the module docstring; anything else goes to ``distributed.SSHCluster``.

    Returns
    -------
    distributed.deploy.spec.SpecCluster
        Started, with the workers of every worker host connected.

    Raises
    ------
    FacilityError
        When ``hosts`` has no worker host or the SSH login fails.

    Examples
    --------
    >>> cluster = esap_dask.open_cluster("ssh")   # doctest: +SKIP
    >>> client = distributed.Client(cluster)      # doctest: +SKIP
    """
    from distributed import SSHCluster

    opts = dict(options)
    hosts = list(opts.pop("hosts", None) or ["127.0.0.1", "127.0.0.1"])
    if len(hosts) < 2:
        raise FacilityError(
            f"facility {facility.name!r}: 'hosts' needs a scheduler host and at least one "
            f"worker host, e.g. hosts: [{hosts[0] if hosts else 'login'}, node1]"
        )
    connect = _connect_options(opts)
    worker_options = dict(opts.pop("worker_options", None) or {})
    for key in ("n_workers", "nthreads", "memory_limit", "lifetime", "lifetime_stagger"):
        if key in opts:
            worker_options[key] = opts.pop(key)
    worker_options.setdefault("nthreads", 1)
    scheduler_options = dict(opts.pop("scheduler_options", None) or {})
    scheduler_options.setdefault("dashboard_address", opts.pop("dashboard_address", "127.0.0.1:0"))

    if all(h in _LOOPBACK for h in hosts):  # everything on this machine: listen on loopback only
        scheduler_options.setdefault("host", "127.0.0.1")
        worker_options.setdefault("host", "127.0.0.1")

    remote_python = opts.pop("remote_python", None)
    container = dict(opts.pop("container", None) or {})
    tls = opts.pop("tls", True)
    tls_dir = opts.pop("tls_directory", None)
    security = new_cluster_security(Path(tls_dir) if tls_dir else None) if tls else None
    credentials = security_directory(security) if security is not None else None

    remote_python = facility_python(facility, container, credentials) or remote_python

    config: dict[str, Any] = {}
    if security is not None:
        scheduler_options.setdefault("protocol", "tls://")
        config = _tls_config(security)
        opts["security"] = security
    try:
        with dask.config.set(config):  # shipped to the remote processes (paths only)
            cluster = SSHCluster(
                hosts,
                connect_options=connect,
                worker_options=worker_options,
                scheduler_options=scheduler_options,
                remote_python=remote_python,
                **opts,
            )
    except (OSError, RuntimeError) as err:
        raise FacilityError(
            f"facility {facility.name!r}: could not start Dask over SSH on {hosts} ({err}); "
            f"check that `ssh -p {connect.get('port', 22)} {hosts[0]} true` works with the "
            "facility's client_keys and known_hosts"
        ) from err
    if credentials is not None and tls_dir is None:  # made for this cluster: goes with it
        weakref.finalize(cluster, shutil.rmtree, credentials, True)
    return cluster
