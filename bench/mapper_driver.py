"""One driver run for bench/mapper_overhead.py, in its own process (for its peak RSS).

``python -m bench.mapper_driver MODE ADDRESS N STORE`` connects to the cluster at ADDRESS
(unused by ``serial``) and maps helloworld over N run numbers into STORE. MODE is

- ``esap``: ``esap_dask.map_observations``;
- ``handwritten``: what a user writes by hand, ``client.map`` + ``gather`` +
  ``xr.concat`` + ``to_zarr``;
- ``serial``: a plain loop in this process, then one ``to_zarr``.

Prints one JSON line: seconds end to end (after connecting) and peak RSS in MiB.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import nullcontext

import numpy as np
import xarray as xr
from distributed import Client

from esap_dask import get_pipeline, map_observations

PARAMS = {"message": "Hello", "sleep": 0.0, "fail": False}


def handwritten(client: Client, values: list[int], store: str) -> None:
    """One task per observation, every result gathered on the driver."""
    hello = get_pipeline("helloworld").function
    futures = client.map(hello, values, **PARAMS)
    results = client.gather(futures)
    parts = [
        xr.Dataset({k: ((), v) for k, v in r.items()}).expand_dims(obs=[str(value)])
        for value, r in zip(values, results, strict=True)
    ]
    xr.concat(parts, dim="obs").to_zarr(store, mode="w", zarr_format=3, consolidated=True)


def serial(values: list[int], store: str) -> None:
    """A loop in the driver: the baseline with no distribution at all."""
    hello = get_pipeline("helloworld").function
    results = [hello(v, **PARAMS) for v in values]
    ds = xr.Dataset(
        {k: ("obs", np.asarray([r[k] for r in results])) for k in results[0]},
        coords={"obs": [str(v) for v in values]},
    )
    ds.to_zarr(store, mode="w", zarr_format=3, consolidated=True)


def peak_rss_mib() -> float:
    """This process's own peak RSS in MiB.

    Linux's ``VmHWM``, not ``getrusage``'s ``ru_maxrss``: a process started with
    ``vfork`` + ``exec`` (as :mod:`subprocess` does) inherits its parent's peak in
    ``ru_maxrss``, so a driver started by a benchmark holding a big scheduler would
    report the benchmark's memory.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    mode, address, n, store = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    values = list(range(n))
    with nullcontext() if mode == "serial" else Client(address) as client:
        t0 = time.perf_counter()
        if mode == "esap":
            summary = map_observations("helloworld", values, store, client=client, progress=False)
            assert summary.succeeded == n, summary
        elif mode == "handwritten":
            handwritten(client, values, store)
        else:
            serial(values, store)
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main()
