"""dask-jobqueue imported the esap-dask way: from any thread, leaving Ctrl-C alone.

Each check runs in a fresh interpreter, where nothing imported dask-jobqueue before.
"""

from __future__ import annotations

import subprocess
import sys

FROM_A_THREAD = """
import signal, threading
errors = []
def job():
    try:
        from esap_dask.deploy.jobqueue import jobqueue_keywords
        assert "queue" in jobqueue_keywords("slurm")
    except BaseException as err:
        errors.append(repr(err))
t = threading.Thread(target=job)
t.start(); t.join()
assert not errors, errors
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
print("ok")
"""

FROM_THE_MAIN_THREAD = """
import signal
from esap_dask.deploy.slurm.jobqueue_import import SLURMCluster
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
print("ok")
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_batch_facilities_open_from_a_job_thread() -> None:
    """The job service's threads import dask-jobqueue (it used to raise 'signal only works...')."""
    done = run(FROM_A_THREAD)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_ctrl_c_still_raises_keyboard_interrupt() -> None:
    """dask-jobqueue 0.9.0 replaces Python's SIGINT handler with sys.exit() at import."""
    done = run(FROM_THE_MAIN_THREAD)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
