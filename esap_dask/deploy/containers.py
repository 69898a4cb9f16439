"""Run batch workers inside a container: the facility's ``runtimeengine`` wraps the worker command.

dask-jobqueue starts a worker as ``<python> -m distributed.cli.dask_worker ...``;
esap-dask replaces ``<python>`` with the container runtime's command, so the
job script keeps dask-jobqueue's structure and its last line reads as a site
admin would write it by hand::

    apptainer exec --cleanenv --bind /data:/data --env OMP_NUM_THREADS=1 \\
        -- /images/esap.sif python -m distributed.cli.dask_worker tls://... --name ...

Facility options (under ``container:``)::

    container:
      image: /images/esap.sif       # or docker://..., registry/image:tag
      python: python                # the interpreter inside the image
      binds: [/data, /scratch:/scratch:ro]
      env: {OMP_NUM_THREADS: "1"}
      options: []                   # extra runtime options, verbatim

The cluster's TLS credential directory is bound automatically, at the same
path, so the worker finds its certificate inside the container. ``--`` ends the runtime's
options before the image, and an image that starts with ``-`` is refused, so an image is never
read as an option. The variables of
:data:`esap_dask.config.WORKER_ENVIRONMENT` are always passed (apptainer's
``--cleanenv`` drops the job's environment, docker and podman never pass it);
a variable of ``env`` with the same name wins.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from esap_dask.deploy.environment import worker_environment
from esap_dask.deploy.facility import Facility, FacilityError

__all__ = ["CONTAINER_ENGINES", "container_python", "facility_python"]

#: Runtime engines this module knows how to wrap a worker with.
CONTAINER_ENGINES = ("apptainer", "singularity", "docker", "podman")


def _bind(spec: str) -> str:
    """``/data`` -> ``/data:/data``; ``src:dst[:opts]`` unchanged."""
    return spec if ":" in spec else f"{spec}:{spec}"


def container_python(
    engine: str,
    *,
    image: str,
    python: str = "python",
    binds: Iterable[str] = (),
    env: Mapping[str, Any] | None = None,
    options: Iterable[str] = (),
) -> str:
    """The shell words that run ``python`` inside ``image`` with ``engine``.

    Parameters
    ----------
    engine
        ``apptainer``, ``singularity``, ``docker`` or ``podman``.
    image
        The image: a ``.sif`` path or ``docker://`` URI (apptainer/singularity),
        or a registry reference (docker/podman).
    python
        The Python interpreter inside the image that has distributed installed.
    binds
        Host paths to mount; ``path`` mounts at the same path, ``src:dst[:ro]`` as given.
    env
        Environment variables set inside the container, on top of
        :data:`esap_dask.config.WORKER_ENVIRONMENT` (a variable given here wins).
    options
        Further runtime options, passed verbatim before ``--`` and the image.

    Returns
    -------
    str
        A prefix to pass as dask-jobqueue's ``python`` option.

    Raises
    ------
    ValueError
        For an unknown engine, a missing image, or an image starting with ``-``.

    Examples
    --------
    >>> container_python("apptainer", image="/img/esap.sif", binds=["/data"])
    ... # doctest: +NORMALIZE_WHITESPACE
    'apptainer exec --cleanenv --bind /data:/data --env MALLOC_MMAP_THRESHOLD_=16777216
     -- /img/esap.sif python'
    >>> container_python("docker", image="ghcr.io/esap/worker:1", env={"A": "1"})
    ... # doctest: +NORMALIZE_WHITESPACE
    'docker run --rm --network host --user "$(id -u):$(id -g)"
     -e MALLOC_MMAP_THRESHOLD_=16777216 -e A=1 -- ghcr.io/esap/worker:1 python'
    """
    if engine not in CONTAINER_ENGINES:
        raise ValueError(
            f"runtimeengine {engine!r} cannot wrap batch workers; "
            f"use one of {', '.join(CONTAINER_ENGINES)} or 'none'"
        )
    if not image:
        raise ValueError(
            f"runtimeengine {engine!r} needs an image: add `container: {{image: ...}}` "
            "to the facility's options"
        )
    if image.startswith("-") or any(c.isspace() or ord(c) < 32 for c in image):
        raise ValueError(
            f"container image {image!r}: an image does not start with '-' nor hold blanks; "
            "check `container: {image: ...}` in the facility's options"
        )
    words: list[str]
    environment = worker_environment(env)
    if engine in ("apptainer", "singularity"):
        words = [engine, "exec", "--cleanenv"]
        for b in dict.fromkeys(binds):
            words += ["--bind", shlex.quote(_bind(b))]
        for key, value in environment.items():
            words += ["--env", shlex.quote(f"{key}={value}")]
    else:
        # host networking: workers and scheduler must reach each other at the host's addresses
        words = [engine, "run", "--rm", "--network", "host", '--user "$(id -u):$(id -g)"']
        for b in dict.fromkeys(binds):
            words += ["-v", shlex.quote(_bind(b))]
        for key, value in environment.items():
            words += ["-e", shlex.quote(f"{key}={value}")]
    words += [str(o) for o in options]
    words += ["--", shlex.quote(image), python]
    return " ".join(words)


def facility_python(
    facility: Facility, container: Mapping[str, Any] | None, credentials: Path | None
) -> str | None:
    """The worker's interpreter command for ``facility``: a container command, or None.

    ``container`` is the facility's ``container:`` options; the TLS ``credentials``
    directory, when there is one, is bound into the container. Unknown options, and
    container options without a runtime engine, are errors that say what to do.
    """
    options = dict(container or {})
    if facility.runtimeengine == "none":
        if options:
            raise FacilityError(
                f"facility {facility.name!r} has container options but runtimeengine: none; "
                "set runtimeengine to apptainer, singularity, docker or podman"
            )
        return None
    binds = list(options.pop("binds", []) or [])
    if credentials is not None:
        binds.append(str(credentials))
    command = container_python(
        facility.runtimeengine,
        image=options.pop("image", ""),
        python=options.pop("python", "python"),
        binds=binds,
        env=options.pop("env", None),
        options=options.pop("options", ()),
    )
    if options:
        raise FacilityError(
            f"facility {facility.name!r}: unknown container option(s) "
            f"{', '.join(sorted(options))}; use image, python, binds, env, options"
        )
    return command
