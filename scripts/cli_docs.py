"""Write each command's ``--help`` into docs/cli.md, so the page cannot go stale.

Usage (from the repository root)::

    PYTHONPATH=. .venv/bin/python scripts/cli_docs.py          # rewrite docs/cli.md
    PYTHONPATH=. .venv/bin/python scripts/cli_docs.py --check  # exit 1 when it is stale

The page keeps its prose; what the script owns are the blocks between
``<!-- cli-help: esap-dask CMD -->`` and ``<!-- /cli-help -->``, one per command of the
click tree (``esap-dask``, ``esap-dask run``, ``esap-dask facilities check``, ...), each
the command's ``--help`` as it prints in an 80-column terminal (``COLUMNS=80``). A
command without a block gets a new section before ``<!-- cli-help: new commands go here
-->``; a block of a command that no longer exists is removed.
``tests/test_docs_recipes.py`` fails when the page differs from :func:`render`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"
COLUMNS = "80"
NEW_HERE = "<!-- cli-help: new commands go here -->"
REGENERATE = "PYTHONPATH=. .venv/bin/python scripts/cli_docs.py"
_BLOCK = re.compile(
    r"<!-- cli-help: (?P<name>esap-dask[a-z -]*?) -->\n.*?<!-- /cli-help -->\n", re.S
)


def commands() -> list[tuple[str, ...]]:
    """Every command path of the click tree, the group itself first: (), ("run",), ..."""
    from esap_dask.cli import main

    found: list[tuple[str, ...]] = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        found.append(path)
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], (*path, name))

    walk(main, ())
    return found


def help_text(path: tuple[str, ...]) -> str:
    """What ``COLUMNS=80 esap-dask PATH --help`` prints (click reads the width from COLUMNS)."""
    from esap_dask.cli import main

    os.environ["COLUMNS"] = COLUMNS
    ctx = click.Context(main, info_name="esap-dask", **main.context_settings)
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
        ctx = click.Context(cmd, info_name=name, parent=ctx, **cmd.context_settings)
    return cmd.get_help(ctx)


def block(path: tuple[str, ...]) -> str:
    """The generated block of one command, markers included."""
    name = " ".join(("esap-dask", *path))
    return (
        f"<!-- cli-help: {name} -->\n```text\n$ {name} --help\n{help_text(path)}\n```\n"
        "<!-- /cli-help -->\n"
    )


def render(text: str) -> str:
    """``text`` (the page) with every command's block regenerated, added or removed."""
    wanted = {" ".join(("esap-dask", *p)): p for p in commands()}
    seen: set[str] = set()

    def replace(m: re.Match[str]) -> str:
        name = m["name"].strip()
        if name not in wanted:
            return ""
        seen.add(name)
        return block(wanted[name])

    text = _BLOCK.sub(replace, text)
    missing = [name for name in wanted if name not in seen]
    if missing:
        if NEW_HERE not in text:
            raise SystemExit(f"{PAGE}: no '{NEW_HERE}' line to add {', '.join(missing)} before")
        sections = "".join(f"## {name}\n\n{block(wanted[name])}\n" for name in missing)
        text = text.replace(NEW_HERE, sections + NEW_HERE)
    return text


def main(argv: list[str]) -> int:
    """Rewrite the page, or with ``--check`` say whether it is current (exit 1 if not)."""
    current = PAGE.read_text()
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print(f"{PAGE} is stale; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        PAGE.write_text(fresh)
        print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
