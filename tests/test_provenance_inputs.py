"""The provenance of a run's inputs renders the same JSON whether or not its text needs escapes."""

from __future__ import annotations

import json

import numpy as np

from esap_dask.engine import provenance_inputs as pi


def _escaped(inputs: dict[str, list[str]], run: str) -> tuple[str, str]:
    """The members json.dumps writes for ``inputs``: the reference text."""
    entities = []
    for i, s, f, c in zip(
        inputs["id"], inputs["source"], inputs["fingerprint"], inputs["checksum"], strict=True
    ):
        doc = {"prov:type": "voprov:Entity", "voprov:name": i, "prov:location": s}
        doc["esap:fingerprint"] = f
        if c:
            doc["voprov:checksum"] = "sha256:" + c
        entities.append(json.dumps({"esap:input/" + i: doc}, separators=(",", ":"))[1:-1])
    used = [
        json.dumps(
            {
                "_:used-" + i: {
                    "prov:activity": run,
                    "prov:entity": "esap:input/" + i,
                    "prov:role": "voprov:input",
                }
            },
            separators=(",", ":"),
        )[1:-1]
        for i in inputs["id"]
    ]
    return ",".join(entities), ",".join(used)


def test_plain_and_escaped_inputs_render_what_json_writes() -> None:
    plain = {
        "id": ["1", "run_2.fits", "a b"],
        "source": ["1", "/data/run_2.fits", "/data/a b"],
        "fingerprint": ["value:00ff", "12-345", "7-8"],
        "checksum": ["", "ab" * 32, ""],
    }
    assert pi._plain(*plain.values())
    for odd in ('quo"te', "back\\slash", "new\nline", "tab\t", "béta", "\x7f", "日本"):
        inputs = {k: [*v, odd if k in ("id", "source") else "x"] for k, v in plain.items()}
        assert not pi._plain(*inputs.values()), odd
        entities, used = _escaped(inputs, "esap:run/r1")
        assert pi.entity_members(inputs) == entities
        assert pi.used_members("esap:run/r1", inputs["id"]) == used
        json.loads("{" + entities + "}")  # valid JSON, whatever the names hold
    entities, used = _escaped(plain, "esap:run/r1")
    assert pi.entity_members(plain) == entities
    assert pi.entity_members({k: np.asarray(v, dtype=object) for k, v in plain.items()}) == entities
    assert pi.used_members("esap:run/r1", plain["id"]) == used
    doc = json.loads("{" + entities + "}")
    assert doc["esap:input/run_2.fits"]["voprov:checksum"] == "sha256:" + "ab" * 32
    assert "voprov:checksum" not in doc["esap:input/1"]
