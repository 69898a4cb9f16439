"""Observations at HTTP URLs: served on loopback, read by the workers through fsspec.

A real HTTP server (the standard library's, plus an ``ETag`` header) serves files; the
mapper fingerprints them by ETag, size and Last-Modified, the workers copy each one
locally for the pipeline, and the products equal those of the same run on the files.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import esap_dask
from esap_dask import map_observations
from esap_dask.engine.observations import as_observations
from tests.conftest import ESAP_DASK, ROOT


class _ETagHandler(http.server.SimpleHTTPRequestHandler):
    """The standard file server, with an ETag (size and mtime) as object stores send."""

    def end_headers(self) -> None:
        path = self.translate_path(self.path)
        if os.path.isfile(path):
            st = os.stat(path)
            self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on loopback; yield its base URL (with a trailing slash)."""
    handler = functools.partial(_ETagHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Five small files to serve."""
    root = tmp_path / "served"
    root.mkdir()
    for i in range(5):
        (root / f"run_{i:03d}.dat").write_bytes(bytes(range(i + 1)) * 100)
    return root


@pytest.fixture
def site(files: Path) -> Iterator[str]:
    """The five files on a loopback HTTP server."""
    yield from serve(files)


@pytest.fixture(scope="module")
def hess_site(hess_dir: Path) -> Iterator[str]:
    """The H.E.S.S. DR1 release (read in place) on a loopback HTTP server."""
    yield from serve(hess_dir)


def test_helloworld_over_http_equals_local_reruns_nothing_then_only_the_changed(
    files: Path, site: str, tmp_path: Path, client: object
) -> None:
    """Products equal the local run's; unchanged rerun runs nothing; a changed file reruns."""
    urls = [site + p.name for p in sorted(files.iterdir())]
    remote, local = tmp_path / "remote.zarr", tmp_path / "local.zarr"
    first = map_observations("helloworld", urls, remote, client=client, progress=False)
    assert (first.succeeded, first.failed) == (5, 0)
    map_observations("helloworld", str(files / "*.dat"), local, client=client, progress=False)
    with xr.open_zarr(remote) as a, xr.open_zarr(local) as b:
        for name in ("size", "checksum", "greeting"):
            xr.testing.assert_identical(a[name].load(), b[name].load())
    ours, theirs = esap_dask.ledger(remote), esap_dask.ledger(local)
    assert list(ours.source) == urls
    # the workers' checksums of the copies are the files' own
    assert list(ours.checksum) == list(theirs.checksum)
    fps = list(ours.fingerprint)
    assert all(fp.startswith("etag:") and "|size:" in fp and "GMT" in fp for fp in fps)

    again = map_observations("helloworld", urls, remote, client=client, progress=False)
    assert (again.total, again.skipped, again.processed) == (5, 5, 0)

    changed = files / "run_002.dat"
    changed.write_bytes(b"new content")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = map_observations("helloworld", urls, remote, client=client, progress=False)
    assert (third.processed, third.skipped) == (1, 4)
    with xr.open_zarr(remote) as a:
        row = list(a["obs"].values).index("run_002.dat")
        assert int(a["size"][row]) == len(b"new content")


def test_missing_and_unreachable_urls_fail_alone_naming_the_url(
    site: str, tmp_path: Path, client: object
) -> None:
    """A 404 and a closed port become those observations' failures; the others are done."""
    missing = site + "nope.dat"
    closed = "http://127.0.0.1:9/run_x.dat"  # discard port: nothing listens
    urls = [site + "run_000.dat", missing, closed]
    summary = map_observations(
        "helloworld", urls, tmp_path / "s.zarr", client=client, progress=False
    )
    assert (summary.succeeded, summary.failed) == (1, 2)
    messages = {f["observation"]: f["message"] for f in summary.to_dict()["failures"]}
    assert missing in messages["nope.dat"] and "no such object" in messages["nope.dat"]
    assert closed in messages["run_x.dat"] and "input storage options" in messages["run_x.dat"]


@pytest.mark.slow
def test_obs_index_url_and_dl3_products_over_http_equal_local(
    hess_site: str, hess_dir: Path, tmp_path: Path, client: object
) -> None:
    """dl3-products over an obs-index URL (with a selection) equals the run on the files."""
    select = {"target": "PKS 2155"}
    observations = as_observations(hess_site + "obs-index.fits.gz", select=select)
    assert all(o.kind == "url" and o.value.startswith(hess_site) for o in observations)
    local_obs = as_observations(hess_dir / "obs-index.fits.gz", select=select)
    assert [o.id for o in observations] == [o.id for o in local_obs]
    remote, local = tmp_path / "remote.zarr", tmp_path / "local.zarr"
    s = map_observations(
        "dl3-products",
        hess_site + "obs-index.fits.gz",
        remote,
        select=select,
        client=client,
        progress=False,
    )
    assert (s.succeeded, s.failed) == (len(local_obs), 0)
    map_observations("dl3-products", local_obs, local, client=client, progress=False)
    with xr.open_zarr(remote) as a, xr.open_zarr(local) as b:
        products = [v for v in b.data_vars if not str(v).startswith("ledger_")]
        # the store's own attrs (creation time, runs) differ; every array and its attrs agree
        xr.testing.assert_identical(
            a[products].load().assign_attrs(esap=None), b[products].load().assign_attrs(esap=None)
        )
        assert np.all(a["target"].values == "PKS 2155-304")


@pytest.mark.slow
def test_cli_reads_a_url_glob_with_input_storage_options(
    files: Path, site: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """`esap-dask run` over an HTTP glob; bad --input-storage-options JSON exits 2 naming it."""
    store = tmp_path / "cli.zarr"
    args = [*ESAP_DASK, "run", "helloworld", "-o", site + "*.dat", "-s", str(store)]
    done = subprocess.run(
        [*args, "--input-storage-options", '{"block_size": 0}', "--json"],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["succeeded"] == 5
    bad = subprocess.run(
        [*args, "--input-storage-options", "{nope"],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2
    assert "--input-storage-options" in bad.stderr


def test_input_options_flat_per_protocol_and_the_facility_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One mapping for all URLs, one per protocol, else S3 from the facility's config."""
    import dask.config

    from esap_dask.engine.remote import input_options

    urls = ["s3://b/k.fits", "https://h/k.fits"]
    assert input_options(urls, "local", {"anon": True}) == {
        "https": {"anon": True},
        "s3": {"anon": True},
    }
    keyed = input_options(urls, "local", {"https": {"headers": {"X": "1"}}, "s3": {"anon": True}})
    assert keyed == {"https": {"headers": {"X": "1"}}, "s3": {"anon": True}}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8721")
    with dask.config.set({"esap.facilities.dirac.storage_options": {"key": "k", "secret": "s"}}):
        resolved = input_options(urls, "dirac", None)
    assert resolved["https"] == {}
    assert resolved["s3"] == {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:8721"},
    }


def test_a_presigned_url_is_named_by_its_object(site: str, tmp_path: Path, client: object) -> None:
    """The query of a presigned URL is neither in the id nor in the pipeline's file name."""
    url = site + "run_001.dat?X-Amz-Signature=abc&X-Amz-Expires=60"
    (obs,) = as_observations([url])
    assert (obs.id, obs.kind) == ("run_001.dat", "url")
    store = tmp_path / "q.zarr"
    map_observations("helloworld", [url], store, client=client, progress=False)
    with xr.open_zarr(store) as ds:
        assert str(ds["greeting"].values[0]) == "Hello, run_001.dat!"
        assert int(ds["size"].values[0]) == 200


def test_unreachable_or_empty_url_lists_are_bad_input_naming_the_url(
    site: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A glob or obs-index at a URL that cannot be read: exit 2 naming it, no traceback."""
    from click.testing import CliRunner

    from esap_dask.cli import main

    closed = "http://127.0.0.1:9/"
    for spec, said in [
        (site + "nothing-*.dat", "no object matches"),
        (closed + "obs-index.fits.gz", closed + "obs-index.fits.gz"),
        (site + "obs-index.fits.gz", "no such object"),
    ]:
        done = CliRunner().invoke(
            main, ["run", "helloworld", "-o", spec, "-s", str(tmp_path / "x")]
        )
        assert done.exit_code == 2, done.output
        assert said in done.output and "Traceback" not in done.output
