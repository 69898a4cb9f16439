#!/usr/bin/env python3
"""A fake ``apptainer`` and CORSIKA, for the tests of concordia's configured CORSIKA runs.

Why a fake: no container runtime runs on the test machines (the docker client is installed
but no daemon; apptainer is not installed) and CORSIKA itself needs a registration to
download, so the tests configure this script as the ``runtime`` of a CORSIKA installation
(Dask config ``esap.corsika.images``). It checks the command line esap-dask gives a real
apptainer (``exec --containall --pwd DIR --bind DIR:DIR -- IMAGE PROGRAM``) and refuses
any other; it then plays the PROGRAM in DIR:

- ``corsika``: reads the card from stdin and writes ``DAT<run>.long`` (``NSHOW`` showers with
  a Gaisser–Hillas fit whose Xmax grows with the shower number) where the card's ``DIRECT``
  says, as CORSIKA does;
- ``exit3``: prints a marker line, then exits 3;
- ``sleep``: sleeps 600 s;
- ``flood``: writes output without end.

Each call appends one JSON line (argv, stdin, environment names) to ``IMAGE.calls``; IMAGE
must be an existing file, as apptainer's ``.sif`` must.
"""

from __future__ import annotations

import json
import os
import sys
import time


def fail(message: str) -> None:
    """Exit as apptainer does for a bad command line."""
    print(f"FATAL: {message}", file=sys.stderr)
    sys.exit(255)


def corsika(card: str) -> None:
    """Write DAT<run>.long for the card, in its DIRECT directory."""
    values = {}
    for line in card.splitlines():
        words = line.split()
        if words:
            values[words[0]] = words[1:]
    run = int(values["RUNNR"][0])
    nshow = int(values["NSHOW"][0])
    direct = values["DIRECT"][0]
    lines = []
    for shower in range(1, nshow + 1):
        xmax = 400.0 + 10 * shower
        lines.append(
            f" LONGITUDINAL DISTRIBUTION IN   3 VERTICAL STEPS OF 100. FOR SHOWER {shower}"
        )
        lines.append(" DEPTH GAMMAS POSITRONS ELECTRONS MU+ MU- HADRONS CHARGED NUCLEI CHERENKOV")
        for depth, charged in ((100.0, 10.0), (400.0, 1000.0), (700.0, 100.0)):
            lines.append(f"  {depth}  0 0 0 0 0 0 {charged} 0 0")
        lines.append(" LONGITUDINAL ENERGY DEPOSIT IN   3 VERTICAL STEPS OF 100.")
        lines.append(f" PARAMETERS         =   {1000.0 * shower} 20.0 {xmax} 50.0 0.0 0.0")
    with open(os.path.join(direct, f"DAT{run:06d}.long"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"fake CORSIKA: run {run}, {nshow} showers")


def main(argv: list[str]) -> None:
    """Check the command line, log the call, play the program."""
    if len(argv) != 9 or argv[:2] != ["exec", "--containall"] or argv[2] != "--pwd":
        fail(f"unexpected command line {argv}")
    workdir = argv[3]
    if argv[4:6] != ["--bind", f"{workdir}:{workdir}"] or argv[6] != "--":
        fail(f"unexpected command line {argv}")
    image, program = argv[7], argv[8]
    if not os.path.isfile(image):
        fail(f"could not open image {image}: no such file")
    card = sys.stdin.read()
    with open(image + ".calls", "a") as log:
        record = {"argv": argv, "stdin": card, "environment": sorted(os.environ)}
        log.write(json.dumps(record) + "\n")
    if program == "corsika":
        corsika(card)
    elif program == "exit3":
        print("FAKE-CORSIKA-OUTPUT-MARKER before exiting 3")
        sys.exit(3)
    elif program == "sleep":
        time.sleep(600)
    elif program == "flood":
        while True:
            sys.stdout.write("x" * 65536)
            sys.stdout.flush()
            time.sleep(0.01)
    else:
        fail(f"{program}: no such program in the image")


if __name__ == "__main__":
    main(sys.argv[1:])
