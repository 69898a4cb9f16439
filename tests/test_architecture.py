"""The layers hold: no import cycle, the import-linter contract, old paths still import."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_there_is_no_import_cycle() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "import_cycles.py")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "0 import cycles" in done.stdout, done.stdout


def test_the_layers_contract_holds() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter)")
    done = subprocess.run([lint], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("esap_dask.gadf", "esap_dask.iact.gadf"),
        ("esap_dask.synthetic", "esap_dask.iact.synthetic"),
        ("esap_dask.mapper", "esap_dask.engine.mapper"),
        ("esap_dask.facilities", "esap_dask.catalogs.facilities"),
        ("esap_dask.service.testing", "esap_dask.testing.service"),
    ],
)
def test_an_old_module_path_imports_the_new_module_with_a_warning(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_the_engine_names_no_instrument_format() -> None:
    tree = ast.parse((ROOT / "esap_dask" / "engine" / "observations.py").read_text())
    imported = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert not {name for name in imported if name.startswith("esap_dask.iact")}, imported
    from esap_dask.engine.observations import observation_indexes

    assert "GADF" in {reader.format for reader in observation_indexes()}


def _reads_dask_config(tree: ast.AST) -> bool:
    """The module calls ``dask.config.<something>`` (get, set, ...)."""
    return any(
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "config"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "dask"
        for node in ast.walk(tree)
    )


def _imports_esap_config(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "esap_dask.config" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "esap_dask.config":
            return True
    return False


def test_every_module_that_reads_the_dask_config_registers_the_esap_defaults() -> None:
    """``import esap_dask`` no longer loads the defaults: a reader must import them itself.

    Without it, ``dask.config.get("esap.max-workers")`` raises KeyError in a process (a
    worker, a script) that imported only that module.
    """
    modules = [*(ROOT / "esap_dask").rglob("*.py"), *(ROOT / "pipelines").glob("*.py")]
    missing = [
        str(path.relative_to(ROOT))
        for path in modules
        if path.name != "config.py" or path.parent.name != "esap_dask"
        for tree in [ast.parse(path.read_text())]
        if _reads_dask_config(tree) and not _imports_esap_config(tree)
    ]
    assert not missing, f"read dask.config without importing esap_dask.config: {missing}"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, esap_dask.engine.connect as c; "
            "print(c.max_workers() > 0, 'esap_dask.config' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.stdout.split() == ["True", "True"], done.stderr
