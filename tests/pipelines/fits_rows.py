"""Test pipeline that opens FITS files: rows and an exposure keyword of the EVENTS table."""

from __future__ import annotations

from astropy.io import fits

from esap_dask import Pipeline, Variable


def fits_rows(path: str) -> dict[str, object]:
    """Rows of the EVENTS HDU and its LIVETIME keyword; clear errors for bad files."""
    try:
        with fits.open(path, memmap=False) as hdul:
            hdul.verify("exception")
            if "EVENTS" not in hdul:
                raise KeyError(f"{path}: no EVENTS HDU (has: {[h.name for h in hdul]})")
            events = hdul["EVENTS"]
            return {"rows": len(events.data), "livetime": float(events.header["LIVETIME"])}
    except (OSError, ValueError, TypeError) as err:  # astropy: truncated data is a ValueError
        raise OSError(f"{path}: not a readable FITS file, truncated or corrupt ({err})") from err


pipeline = Pipeline(
    name="test-fits-rows",
    version="1",
    description="rows of the EVENTS HDU",
    function=fits_rows,
    schema=[
        Variable("rows", "int64", units="count", description="events"),
        Variable("livetime", "float64", units="s", description="live time"),
    ],
)
