"""Drive one esap-dask UWS job with pyvo: create and run it, wait, list and fetch its results.

Start the service first (see docs/service.md), with a token file holding "tok-alice alice".
"""

import requests
from pyvo.dal.tap import AsyncTAPJob

service = "http://127.0.0.1:8000"
session = requests.Session()
session.headers["Authorization"] = "Bearer tok-alice"

# create a job (303 See Other -> the job's URL) and run it at once
r = session.post(
    f"{service}/uws/jobs",
    data={
        "pipeline": "helloworld",
        "observations": "1..3",
        "message": "Hi",
        "RUNID": "first-try",
        "PHASE": "RUN",
    },
)
job = AsyncTAPJob(r.url, session=session, delete=False)
print(job.url, job.phase, job.owner)
job.wait(phases={"COMPLETED", "ERROR", "ABORTED"}, timeout=120)
print(job.phase)
for result in job.results:
    print(result.id_, result.href)
print(session.get(f"{job.url}/results/ledger").json())
