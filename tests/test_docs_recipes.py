"""What the documentation shows runs: the ``python`` blocks, docs/cli.md and the API page.

- Every ```` ```python ```` block of ``docs/**/*.md`` runs, page by page, in one namespace per
  page (as a reader runs them one after the other in a notebook), in a fresh directory that
  holds ``runs/`` (four synthetic DL3 observations, the name the pages use) and whatever
  the page's setup in :data:`SETUP` makes (the store a page reads, say). The namespace
  starts with the imports a reader has at hand: ``esap_dask``, ``xarray as xr``,
  ``numpy as np``, ``glob``, ``os`` and ``distributed.Client``.
- service.md's blocks talk to a real ``esap-dask serve`` the test starts (token
  ``tok-alice``), whose URL replaces the pages' ``http://127.0.0.1:8000``.
- A block that cannot run here (it needs a site that does not exist, a grid storage
  element) is marked in the Markdown, visibly, on the line before its fence:
  ``<!-- docs-test: not run: REASON -->``; every such block is reported as a warning in
  the test summary, and at most a third of the blocks may opt out.
- docs/cli.md equals what the commands print (``scripts/cli_docs.py`` writes it).
- docs/api.md has an entry for every public name of ``esap_dask``.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import esap_dask
from esap_dask.testing.service import ServiceProcess, write_tokens
from tests.conftest import ESAP_DASK, HESS, ROOT

DOCS = ROOT / "docs"
_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.M | re.S)
_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"\s*$', re.M)
_OPT_OUT = re.compile(r"<!-- docs-test: not run: (?P<reason>.+?) -->\s*$")

#: Shell commands run (in the page's directory) before a page's blocks.
SETUP: dict[str, list[str]] = {
    "getting-started.md": ["esap-dask -q demo --count 3"],
    "index.md": [],
    "store.md": ["esap-dask -q run dl3-products -o 'runs/*.fits.gz' -s products.zarr"],
    "notebooks.md": ["esap-dask -q run dl3-products -o 'runs/*.fits.gz' -s crab.zarr"],
    "pipelines.md": [
        "for i in 1 2 3; do head -c 1000 /dev/urandom > runs/r$i.bin; done",
        "esap-dask -q run gammapy-spectrum -s crab.zarr"
        f" -o '{HESS}/data/hess_dl3_dr1_obs_id_02352[36].fits.gz'",
    ],
    "observations.md": [f"ln -s {HESS} hess-dl3-dr1"],
    "troubleshooting.md": [
        "mkdir bad && printf 'x%.0s' $(seq 5000) > bad/truncated.fits",
        "esap-dask -q run dl3-products -o 'bad/*.fits' -s bad.zarr || test $? = 1",
    ],
}

_DRIVER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
exec("import esap_dask, glob, os\\nimport numpy as np\\nimport xarray as xr\\n"
     "from distributed import Client", namespace)
for where, code in blocks:
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        print(f"DOCS BLOCK FAILED: {where}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, opt-out reason or None) of each ``python`` block, snippets expanded."""
    text = page.read_text()
    found = []
    for m in _FENCE.finditer(text):
        if m["info"].strip().split(" ")[0] != "python":
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        opt_out = _OPT_OUT.search(before)
        body = _SNIPPET.sub(lambda s: (ROOT / s["path"]).read_text(), m["body"])
        found.append((line, body, opt_out["reason"] if opt_out else None))
    return found


def pages_with_python() -> list[Path]:
    return [p for p in sorted(DOCS.rglob("*.md")) if python_blocks(p)]


def test_the_opt_out_comments_are_few_and_say_why() -> None:
    opted = [
        (page.relative_to(ROOT), line, reason)
        for page in pages_with_python()
        for line, _, reason in python_blocks(page)
        if reason
    ]
    total = sum(len(python_blocks(p)) for p in pages_with_python())
    for page, line, reason in opted:
        warnings.warn(f"{page}:{line}: python block not run: {reason}", stacklevel=1)
    assert all(len(reason) > 10 for _, _, reason in opted)
    assert len(opted) <= total // 3, f"{len(opted)} of {total} python blocks opt out: {opted}"


#: A facility a page's blocks open -> the project script that starts what it needs.
SERVICES = {"slurm-loopback": "slurm", "ssh": "sshd", "dirac": "diracx"}
_OPENS = re.compile(r"""(?:open_cluster\(|facility=)\s*["'](?P<name>[\w-]+)["']""")


def _require_services(page: str, code: str) -> None:
    """Fail at once, naming the command, when a page opens a facility whose service is down.

    (Without it, a page opening ``slurm-loopback`` with no SLURM waited for workers that
    never came, until the test's timeout.)
    """
    opened = {m["name"] for m in _OPENS.finditer(code)}
    for facility, service in SERVICES.items():
        if facility not in opened:
            continue
        script = ROOT / "scripts" / f"{service}.sh"
        status = subprocess.run(["bash", str(script), "status"], capture_output=True, text=True)
        if status.returncode != 0:
            said = ((status.stdout + status.stderr).strip().splitlines() or ["it is down"])[-1]
            start = f"bash scripts/{service}.sh start"
            hint = "" if start in said else f"; run `{start}`"
            pytest.fail(f"{page} opens the {facility} facility: {said}{hint}")


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_python(), ids=lambda p: str(p.relative_to(DOCS)))
def test_the_python_blocks_of_a_page_run(page: Path, tmp_path: Path) -> None:
    from esap_dask.iact.synthetic import write_observations

    name = str(page.relative_to(DOCS))
    blocks = []
    for line, code, reason in python_blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        if not reason:
            blocks.append((where, code))
    if not blocks:
        return
    _require_services(name, "\n".join(code for _, code in blocks))
    for path in write_observations(tmp_path / "runs", 4, seed=1):  # runs/*.fits.gz
        Path(f"{path}.gz").write_bytes(gzip.compress(Path(path).read_bytes()))
        Path(path).unlink()
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    bin_dir = tmp_path / "bin"  # `esap-dask` in the setup commands is this tree's
    bin_dir.mkdir()
    (bin_dir / "esap-dask").write_text(f'#!/bin/sh\nexec {" ".join(ESAP_DASK)} "$@"\n')
    (bin_dir / "esap-dask").chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for command in SETUP.get(name, []):
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"setup of {name} `{command}`:\n{done.stderr[-3000:]}"
    script = tmp_path / "blocks.json"
    with contextlib.ExitStack() as stack:
        if name == "service.md":
            tokens = write_tokens(tmp_path / "tokens.txt", {"tok-alice": "alice"})
            svc = stack.enter_context(ServiceProcess(tmp_path / "service", tokens))
            blocks = [(w, c.replace("http://127.0.0.1:8000", svc.url)) for w, c in blocks]
            env["ESAP_DASK_SERVICE"] = svc.url
        script.write_text(json.dumps(blocks))
        done = subprocess.run([sys.executable, "-c", _DRIVER, str(script)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]


def _cli_docs():
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_what_the_commands_print() -> None:
    cli_docs = _cli_docs()
    page = cli_docs.PAGE.read_text()
    fresh = cli_docs.render(page)
    stale = [
        " ".join(("esap-dask", *path))
        for path in cli_docs.commands()
        if cli_docs.block(path) not in page
    ]
    assert fresh == page, (
        f"docs/cli.md is stale (the --help of {', '.join(stale) or 'a removed command'} "
        f"differs); regenerate it: {cli_docs.REGENERATE}"
    )


def test_the_help_on_the_page_is_what_a_terminal_shows() -> None:
    """The in-process rendering equals the real command's output in an 80-column terminal."""
    cli_docs = _cli_docs()
    for path in [(), ("facilities", "check")]:
        done = subprocess.run([*ESAP_DASK, *path, "--help"], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "80"}, check=True)  # fmt: skip
        assert done.stdout == cli_docs.help_text(path) + "\n"


def test_every_public_name_has_an_entry_on_the_api_page() -> None:
    text = (DOCS / "api.md").read_text()
    entries = {m.rsplit(".", 1)[-1] for m in re.findall(r"^::: (\S+)", text, re.M)}
    missing = sorted(set(esap_dask.__all__) - {"__version__"} - entries)
    assert not missing, f"docs/api.md has no '::: module.name' entry for {missing}"
    for target in re.findall(r"^::: (\S+)", text, re.M):
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), f"docs/api.md: {target}"


@pytest.mark.slow
def test_the_api_page_renders_the_docstrings(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    html = (site / "api" / "index.html").read_text()
    first_line = esap_dask.map_observations.__doc__.strip().splitlines()[0]
    assert first_line.split("``")[0].strip() in html
    assert "check_facility" in html and "Start one worker on facility" in html
