"""``python -m esap_dask`` is ``esap-dask``."""

from esap_dask.cli import main

main()
