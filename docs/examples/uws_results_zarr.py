"""Run one esap-dask UWS job and open its output with xarray, straight from the service.

pyvo's UWS parser reads the job document; a requests session carries the token; xarray
opens the job's Zarr store over HTTP with the same token. Start the service first (see
docs/service.md), with a token file holding "tok-alice alice"; ESAP_DASK_SERVICE is its URL.
"""

import io
import os

import requests
import xarray as xr
from pyvo.io.uws import parse_job

service = os.environ.get("ESAP_DASK_SERVICE", "http://127.0.0.1:8000")
auth = {"Authorization": "Bearer tok-alice"}
session = requests.Session()
session.headers.update(auth)

# create a job and run it at once (303 See Other -> the job's URL)
r = session.post(
    f"{service}/uws/jobs",
    data={"pipeline": "helloworld", "observations": "1..3", "PHASE": "RUN"},
)
job_url = r.url

# blocking WAITs until the job has ended
job = parse_job(io.BytesIO(session.get(job_url).content))
while job.phase in ("QUEUED", "EXECUTING"):
    job = parse_job(io.BytesIO(session.get(job_url, params={"WAIT": "30"}).content))
print(job.phase)

results = {result.id_: result.href for result in job.results}
ds = xr.open_zarr(results["store"], storage_options={"headers": auth})
print(dict(ds.sizes))
print(list(ds["greeting"].values))
