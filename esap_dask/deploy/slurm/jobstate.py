"""What the batch system says about a cluster's worker jobs: states, reasons, stderr tails.

The SLURM cluster manager polls ``squeue`` (one call per poll for all of a
cluster's jobs, array tasks expanded) and keeps one :class:`JobState` per worker
job. ``squeue --states=all`` also lists jobs that ended less than ``MinJobAge``
seconds ago; when a site runs slurmdbd, ``sacct`` answers for older ones.

A job whose pending reason means it can never start (:data:`NEVER_STARTS`), or
that ends before its worker ever connected, is a configuration error: it is
raised as a :class:`WorkerJobError` carrying SLURM's state and reason and the
tail of the job's stderr file.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACTIVE_STATES",
    "NEVER_STARTS",
    "JobState",
    "WorkerJobError",
    "parse_squeue",
    "query_slurm",
    "stderr_tail",
]

#: States of a job that is still queued or alive.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)

#: Pending reasons after which SLURM will never start the job without an admin or a new request.
NEVER_STARTS = frozenset(
    {
        "BadConstraints",
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "InvalidAccount",
        "InvalidQOS",
        "DependencyNeverSatisfied",
        "QOSMaxWallDurationPerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob",
        "AssocMaxCpuPerJobLimit",
        "QOSMaxNodePerJobLimit",
        "AccountNotAllowed",
        "ReqNodeNotAvail, UnavailableNodes:",
    }
)

SQUEUE_FORMAT = "ArrayJobID:24|,ArrayTaskID:16|,JobID:24|,State:24|,Reason:64|,exit_code:8|"


@dataclass(frozen=True)
class JobState:
    """The batch system's view of one worker job.

    Attributes
    ----------
    job_id
        ``"<array job id>_<task index>"`` for array tasks, else the job id.
    state
        SLURM's state name: PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED, ...
    reason
        Why it is pending or why it ended (``"None"`` when SLURM gives none).
    exit_code
        ``"<exit status>:<signal>"`` once the job ended, else ``""``.
    """

    job_id: str
    state: str
    reason: str = "None"
    exit_code: str = ""

    @property
    def active(self) -> bool:
        """Whether the job is still queued or running."""
        return self.state in ACTIVE_STATES

    @property
    def never_starts(self) -> bool:
        """Whether the job is pending for a reason that will not go away by itself."""
        return self.state == "PENDING" and (
            self.reason in NEVER_STARTS or self.reason.startswith("ReqNodeNotAvail, Unavail")
        )

    def describe(self) -> str:
        """One line for logs and errors, e.g. ``"12_3 FAILED (NonZeroExitCode, exit 1:0)"``."""
        extra = [r for r in (self.reason,) if r and r != "None"]
        if self.exit_code and self.exit_code != "0:0":
            extra.append(f"exit {self.exit_code}")
        return f"{self.job_id} {self.state}" + (f" ({', '.join(extra)})" if extra else "")


class WorkerJobError(RuntimeError):
    """A worker job could not be submitted, cannot start, or ended before its worker connected."""


def _exit_code(raw: str) -> str:
    """squeue gives the raw wait status (768 = exit 3); SLURM's own notation is ``3:0``."""
    raw = raw.strip()
    if not raw or raw in ("N/A", "(null)"):
        return ""
    if ":" in raw:
        return raw
    try:
        status = int(raw)
    except ValueError:
        return raw
    return f"{status >> 8}:{status & 0x7F}"


def parse_squeue(text: str) -> dict[str, JobState]:
    """Parse ``squeue --array --noheader -O`` output in :data:`SQUEUE_FORMAT` into job states."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 6 or not fields[0]:
            continue
        array_id, task, job_id, state, reason, code = fields[:6]
        key = f"{array_id}_{task}" if task not in ("", "N/A") else job_id
        state = state.split()[0] if state else "UNKNOWN"
        exit_code = _exit_code(code) if state not in ACTIVE_STATES else ""
        states[key] = JobState(key, state, reason or "None", exit_code)
    return states


async def _run(*cmd: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def query_slurm(job_name: str, missing: Iterable[str] = ()) -> dict[str, JobState]:
    """The states of all jobs called ``job_name``, from squeue (and sacct for ``missing`` ids).

    ``missing`` are job ids squeue no longer knows (older than MinJobAge); they
    are asked of ``sacct`` when the site has accounting, and left out otherwise.
    """
    code, out, err = await _run(
        "squeue", "--noheader", "--array", "--states=all", f"--name={job_name}", "-O", SQUEUE_FORMAT
    )
    if code != 0:
        raise WorkerJobError(f"squeue failed ({err.strip()}); is slurmctld running?")
    states = parse_squeue(out)
    gone = [j for j in missing if j not in states]
    if gone and shutil.which("sacct"):
        code, out, _ = await _run(
            "sacct", "--noheader", "--parsable2", "--allocations",
            "--format=JobID,State,Reason,ExitCode", f"--jobs={','.join(gone)}",
        )  # fmt: skip
        if code == 0:  # accounting disabled: sacct exits 1, the jobs simply stay unknown
            for line in out.splitlines():
                parts = line.split("|")
                if len(parts) >= 4 and parts[0] in gone:
                    state = parts[1].split()[0]
                    states[parts[0]] = JobState(parts[0], state, parts[2] or "None", parts[3])
    return states


def stderr_tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a job's stderr file ('' when there is none yet)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 16384))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])
