"""``python -m esap_dask`` is ``esap-dask``."""

from esap_dask.cli import main

main(prog_name="esap-dask")  # the usage lines and shell completion name esap-dask
