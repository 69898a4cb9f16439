"""The documentation site: it builds with warnings as errors, and what it shows is true.

- ``mkdocs build --strict`` succeeds, with and without the generated benchmark page;
- every ``esap-dask <command>`` the pages show (in shell blocks and inline code) exists;
- every ``clusters/*.yaml`` example block is a facility file esap-dask accepts, whose options
  are ones its cluster manager takes; the blocks of the shipped facilities match the files.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask.config
import pytest
import yaml

from tests.conftest import ESAP_DASK, ROOT

DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
INSTALL_HINT = "install the docs tools: .venv/bin/pip install -e '.[docs]'"

_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.M | re.S)
_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"\s*$', re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_COMMAND = re.compile(r"(?:^|[\s/\"'(])esap-dask (?P<cmd>[a-z][a-z-]*)\b")
_SHELL = {"bash", "sh", "shell", "console"}

#: Options esap-dask itself reads, per cluster manager (see the module docstrings of
#: esap_dask.deploy.jobqueue, .slurm, .ssh, .local); the rest go to the Dask/jobqueue classes.
_COMMON = {"n_workers", "dashboard_address", "storage_options"}
_JOBQUEUE = _COMMON | {
    "adapt", "host", "port", "scheduler_options", "tls", "tls_directory",
    "lifetime_margin", "lifetime_stagger", "container",
}  # fmt: skip
_SLURM = _JOBQUEUE | {
    "array", "array_cap", "poll_interval", "max_array_size", "scheduler_in_job", "scheduler_job",
}  # fmt: skip
_SSH = _COMMON | {
    "hosts", "port", "username", "client_keys", "known_hosts", "config", "connect_options",
    "worker_options", "scheduler_options", "nthreads", "memory_limit", "lifetime",
    "lifetime_stagger", "remote_python", "tls", "tls_directory", "container",
}  # fmt: skip
_CONTAINER = {"image", "python", "binds", "env", "options"}


def pages() -> list[Path]:
    """Every Markdown page of the site (the generated benchmark page included)."""
    return sorted(DOCS.rglob("*.md"))


def expanded(page: Path) -> str:
    """The page's text with its ``--8<--`` snippet includes replaced by the included files."""
    text = page.read_text()
    return _SNIPPET.sub(lambda m: (ROOT / m["path"]).read_text(), text)


def blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m["info"].strip(), m["body"]) for m in _FENCE.finditer(text)]


def _params(*callables: Any) -> set[str]:
    names: set[str] = set()
    for c in callables:
        names |= set(inspect.signature(c).parameters)
    return names - {"self", "kwargs", "args", "base_class_kwargs", "job_kwargs"}


def allowed_options(facilitytype: str) -> set[str]:
    """The option names a facility of this type may carry in the docs."""
    if facilitytype == "local":
        from distributed import LocalCluster, Nanny, Worker

        # LocalCluster passes the keywords it does not know on to each worker
        return _COMMON | {"tls"} | _params(LocalCluster.__init__, Worker.__init__, Nanny.__init__)
    if facilitytype == "ssh":
        from distributed import SSHCluster

        return _SSH | _params(SSHCluster)
    if facilitytype == "dirac":
        from esap_dask.deploy.dirac.cluster import DiracCluster

        return _COMMON | _params(DiracCluster.__init__)
    import dask_jobqueue
    from dask_jobqueue.core import Job, JobQueueCluster

    job = {
        "slurm": "slurm.SLURMJob",
        "pbs": "pbs.PBSJob",
        "sge": "sge.SGEJob",
        "htcondor": "htcondor.HTCondorJob",
        "lsf": "lsf.LSFJob",
    }[facilitytype]
    module, cls = job.split(".")
    job_cls = getattr(getattr(dask_jobqueue, module), cls)
    names = _params(Job.__init__, job_cls.__init__, JobQueueCluster.__init__)
    if facilitytype == "slurm":
        from esap_dask.deploy.slurm.cluster import SLURMArrayCluster

        return _SLURM | names | _params(SLURMArrayCluster.__init__)
    return _JOBQUEUE | names


def facility_blocks() -> list[tuple[str, str, str]]:
    """(page, file name, YAML text) of every ``yaml title="clusters/*.yaml"`` block."""
    found = []
    for page in pages():
        for info, body in blocks(expanded(page)):
            m = re.match(r'ya?ml\s+title="clusters/(?P<file>[^"/]+\.yaml)"', info)
            if m:
                found.append((str(page.relative_to(ROOT)), m["file"], body))
    return found


def _mkdocs(site: Path, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail(f"mkdocs is not installed; {INSTALL_HINT}")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_clean(done: subprocess.CompletedProcess[str]) -> None:
    output = done.stdout + done.stderr
    warnings = [ln for ln in output.splitlines() if re.search(r"\bWARNING\b|\bERROR\b", ln)]
    assert done.returncode == 0 and not warnings, (
        f"mkdocs build --strict failed (exit {done.returncode}):\n{output}"
    )


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    done = _mkdocs(tmp_path / "site", MKDOCS_YML, ROOT)
    _assert_clean(done)
    assert (tmp_path / "site" / "index.html").exists()
    scheduled = (tmp_path / "site" / "scheduled" / "index.html").read_text()
    assert "ESAP_STORE" in scheduled, "the example crontab is not included in the page"


def test_the_site_builds_before_any_benchmark_ran(tmp_path: Path) -> None:
    """docs/benchmarks/ is generated by bench.suite; the site must build without it too."""
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("benchmarks"))
    shutil.copy(MKDOCS_YML, copy / "mkdocs.yml")
    shutil.copy(ROOT / "CHANGELOG.md", copy / "CHANGELOG.md")
    shutil.copytree(ROOT / "clusters", copy / "clusters")  # included by facilities/slurm.md
    done = _mkdocs(tmp_path / "site", copy / "mkdocs.yml", copy)
    _assert_clean(done)
    assert not (tmp_path / "site" / "benchmarks" / "results").exists()


def test_every_command_the_docs_show_exists() -> None:
    named: dict[str, set[str]] = {}
    for page in pages():
        text = expanded(page)
        snippets = [body for info, body in blocks(text) if info.split(" ")[0] in _SHELL]
        prose = _FENCE.sub("", text)
        snippets += _INLINE.findall(prose)
        for snippet in snippets:
            for line in snippet.splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line)  # shell comments
                for m in _COMMAND.finditer(line):
                    named.setdefault(m["cmd"], set()).add(str(page.relative_to(ROOT)))
    assert {"run", "status", "demo", "reproduce"} <= set(named), named
    for cmd, where in sorted(named.items()):
        done = subprocess.run([*ESAP_DASK, cmd, "--help"], capture_output=True, text=True)
        assert done.returncode == 0, (
            f"`esap-dask {cmd}` is named in {', '.join(sorted(where))} but "
            f"`esap-dask {cmd} --help` exits {done.returncode}:\n{done.stderr}"
        )


def test_every_module_the_docs_run_with_python_m_exists() -> None:
    modules: dict[str, set[str]] = {}
    for page in pages():
        for m in re.finditer(r"python -m (esap_dask[\w.]*)", expanded(page)):
            modules.setdefault(m[1], set()).add(str(page.relative_to(ROOT)))
    for module, where in sorted(modules.items()):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (
            f"`python -m {module}` is named in {', '.join(sorted(where))} but `--help` exits "
            f"{done.returncode}:\n{done.stderr[-2000:]}"
        )


def test_every_facility_example_is_a_valid_facility(tmp_path: Path) -> None:
    from esap_dask.catalogs.facilities import list_facilities

    examples = facility_blocks()
    types = {yaml.safe_load(text)["facilitytype"] for _, _, text in examples}
    assert {"local", "slurm", "pbs", "sge", "htcondor", "lsf", "ssh", "dirac"} <= types
    for i, (page, file, text) in enumerate(examples):
        where = f"{page}: clusters/{file}"
        record = yaml.safe_load(text)
        assert isinstance(record, dict), f"{where}: not a YAML mapping"
        assert {"name", "facilitytype"} <= set(record), f"{where}: needs name and facilitytype"
        assert record["name"] == file.removesuffix(".yaml"), f"{where}: name is not the file's"
        catalog = tmp_path / str(i)
        catalog.mkdir()
        (catalog / file).write_text(text)
        with dask.config.set({"esap.facilities-path": [str(catalog)]}):
            loaded = {f.name: f for f in list_facilities()}  # esap-dask's own checks
        assert record["name"] in loaded, where
        options = record.get("options") or {}
        unknown = set(options) - allowed_options(record["facilitytype"])
        assert not unknown, f"{where}: options no cluster manager takes: {sorted(unknown)}"
        unknown = set(options.get("container") or {}) - _CONTAINER
        assert not unknown, f"{where}: unknown container keys {sorted(unknown)}"


def test_shipped_facility_examples_match_the_catalog_files() -> None:
    for page, file, text in facility_blocks():
        shipped = ROOT / "clusters" / file
        if not shipped.exists():
            continue
        doc, real = yaml.safe_load(text), yaml.safe_load(shipped.read_text())
        for key in ("name", "facilitytype", "runtimeengine", "url", "options"):
            assert doc.get(key) == real.get(key), (
                f"{page} shows clusters/{file} with {key}={doc.get(key)!r}, "
                f"but the file has {real.get(key)!r}"
            )
