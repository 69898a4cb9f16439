"""The PROV-JSON text of a run's inputs, as its tasks and its driver render it.

Each processed input is a used ``prov:Entity`` (location, fingerprint, checksum) and a
``used`` relation of the run (see :mod:`esap_dask.engine.provenance`). A task renders the
inputs of its batch into a part beside the store (:func:`write_part`); the run's record
joins the parts, and renders the inputs no part covers from the ledger. A module of its
own: the worker-side task imports it, and the driver's provenance imports the task.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii as _quote  # json.dumps's string escaper
from typing import Any

import numpy as np

__all__ = ["TEXT_ROWS", "Column", "entity_members", "parts_url", "used_members", "write_part"]

#: Inputs rendered as one piece of text: a block of ledger chunks of 12,500 rows rendered
#: at once held 9 MiB of text (its parts, the joined text and its bytes), the driver's
#: peak of a 100,000-observation run once run numbers were no longer held as objects.
TEXT_ROWS = 2000


def parts_url(store: str, run_id: str) -> str:
    """The directory where the tasks of run ``run_id`` leave their inputs' provenance."""
    return f"{store.rstrip('/')}.provenance/{run_id}.parts"


#: A column of inputs: the ledger's (an array), or a task's (a list).
Column = Sequence[str] | np.ndarray


def _tolist(values: Column) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


#: The bytes json's escaper returns as they are: printable ASCII but the quote and backslash.
_AS_IS = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _plain(*columns: list[Any]) -> bool:
    """Whether every string of ``columns`` is its own JSON text between quotes.

    True when all of it is printable ASCII without a quote or a backslash, which
    json's escaper returns as it is: run numbers, plain file names, fingerprints and
    checksums. One pass over the joined text spares the escaper's call on each of the
    six strings an input renders: entities and usages of 50,000 run numbers took 1.34 µs
    an input escaped, 1.04 as they are; of 50,000 files with checksums 3.24 and 2.52
    (interleaved, medians of 9, load 0.6-1.0). The pass deletes the bytes allowed as they
    are (``bytes.translate``) and looks for what is left: 0.31 µs a file's four strings
    against 0.79 for ``str.isprintable`` and two searches (5,000 files, best of 7, ad hoc,
    session 18). ``tests/test_provenance_inputs.py`` checks that both ways write what
    ``json.dumps`` writes.
    """
    text = "".join(itertools.chain.from_iterable(columns))
    return text.isascii() and not text.encode("ascii").translate(None, _AS_IS)


def used_members(run: str, ids: Column) -> str:
    """JSON members: the usages of inputs ``ids`` by ``run``.

    Written from templates with json's own C string escaper: building a dict per input
    and encoding it took a fifth of a 100,000-observation run. (Its call, 48 ns, is
    barely slower than a bare f-string, 35 ns; ``'"{}"'.format`` took 104 ns.) Every
    name is escaped, the usage's own too: a file named with a quote, a backslash or a
    newline made the document invalid JSON. Names that need no escape
    (:func:`_plain`) are written as they are.
    """
    head = f'{{"prov:activity":{_quote(run)},"prov:entity":'
    names = _tolist(ids)
    if _plain(names):
        return ",".join(
            [f'"_:used-{i}":{head}"esap:input/{i}","prov:role":"voprov:input"}}' for i in names]
        )
    return ",".join(
        f'{_quote("_:used-" + i)}:{head}{_quote("esap:input/" + i)},"prov:role":"voprov:input"}}'
        for i in names
    )


def entity_members(inputs: Mapping[str, Column]) -> str:
    """JSON members: the entities of ``inputs`` (columns id, source, fingerprint, checksum).

    Inputs whose text needs no escape (:func:`_plain`) are written as they are.
    """
    ids, sources, fps, checksums = (
        _tolist(inputs[k]) for k in ("id", "source", "fingerprint", "checksum")
    )
    if _plain(ids, sources, fps, checksums):
        digests = [f',"voprov:checksum":"sha256:{c}"' if c else "" for c in checksums]
        return ",".join(
            [
                f'"esap:input/{ident}":{{"prov:type":"voprov:Entity","voprov:name":"{ident}",'
                f'"prov:location":"{source}","esap:fingerprint":"{fp}"{digest}}}'
                for ident, source, fp, digest in zip(ids, sources, fps, digests, strict=True)
            ]
        )
    parts = []
    for ident, source, fp, checksum in zip(ids, sources, fps, checksums, strict=True):
        digest = f',"voprov:checksum":{_quote("sha256:" + checksum)}' if checksum else ""
        parts.append(
            f'{_quote("esap:input/" + ident)}:{{"prov:type":"voprov:Entity",'
            f'"voprov:name":{_quote(ident)},"prov:location":{_quote(source)},'
            f'"esap:fingerprint":{_quote(fp)}{digest}}}'
        )
    return ",".join(parts)


def write_part(
    directory: str,
    storage_options: Mapping[str, Any] | None,
    run_id: str,
    index: int,
    inputs: Mapping[str, Column],
) -> tuple[int, int]:
    """Render the inputs of one batch into ``<directory>/<index>``; (entity, usage) bytes.

    Called by a task while its rows are committed (:func:`esap_dask.engine.task.run_batch`):
    the workers render the inputs of their batches while the run goes on, and the run's
    record joins the parts (:class:`esap_dask.engine.provenance.Part`) instead of reading
    the ledger back and
    rendering every input on the driver, which took a quarter of a run of 100,000 tiny
    observations (0.29 s of 1.12; 0.05-0.07 s of 0.29 at 10,000). ``inputs``: columns
    ``id``, ``source``, ``fingerprint``, ``checksum``. The file holds the entities' JSON
    members, then the usages', without a separator.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(f"{directory}/{index}", **dict(storage_options or {}))
    run = f"esap:run/{run_id}"
    n = len(inputs["id"])
    sizes = [0, 0]
    with fs.open(path, "wb") as f:
        for k in (0, 1):
            sep = b""
            for lo in range(0, n, TEXT_ROWS):
                block = {key: values[lo : lo + TEXT_ROWS] for key, values in inputs.items()}
                text = entity_members(block) if k == 0 else used_members(run, block["id"])
                data = sep + text.encode()
                f.write(data)
                sizes[k] += len(data)
                sep = b","
    return sizes[0], sizes[1]
