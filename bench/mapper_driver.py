"""One driver run for bench/mapper_overhead.py, in its own process (for its peak RSS).

``python -m bench.mapper_driver MODE ADDRESS N STORE`` with MODE ``esap`` (map_observations)
or ``handwritten`` (client.map + gather + xr.concat + to_zarr), connected to the cluster at
ADDRESS; prints one JSON line: seconds end to end (after connecting) and peak RSS in MiB.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import xarray as xr
from distributed import Client

from esap_dask import get_pipeline, map_observations


def handwritten(client: Client, values: list[int], store: str) -> None:
    """What a user writes by hand: one task per observation, gathered on the driver."""
    hello = get_pipeline("helloworld").function
    futures = client.map(hello, values, message="Hello", sleep=0.0, fail=False)
    results = client.gather(futures)
    parts = [
        xr.Dataset({k: ((), v) for k, v in r.items()}).expand_dims(obs=[str(value)])
        for value, r in zip(values, results, strict=True)
    ]
    xr.concat(parts, dim="obs").to_zarr(store, mode="w", zarr_format=3, consolidated=True)


def main() -> None:
    mode, address, n, store = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    values = list(range(n))
    with Client(address) as client:
        t0 = time.perf_counter()
        if mode == "esap":
            summary = map_observations("helloworld", values, store, client=client, progress=False)
            assert summary.succeeded == n, summary
        else:
            handwritten(client, values, store)
        seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": rss}))


if __name__ == "__main__":
    main()
