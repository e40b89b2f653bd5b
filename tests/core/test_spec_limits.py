"""Requests that would fail late or run without end are refused when the spec is parsed (torch-free)."""

from __future__ import annotations

import pytest

from twossp_core.errors import InvalidSpec
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import parse_spec, parse_sweep_spec

BASE = {"model": "org/name", "sparsity": 0.5, "calibration": ["/d/t.txt"], "eval": ["/d/t.txt"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"options": {"alpha": float("inf")}}, "alpha"),
        ({"options": {"alpha": float("nan")}}, "alpha"),
        ({"doc_separator": ""}, "doc_separator"),
        ({"seed": 2**70}, "seed"),
        ({"seed": -1}, "seed"),
        ({"calibration_windows": 10**7}, "calibration_windows"),
        ({"eval_windows": 10**9}, "eval_windows"),
        ({"seq_len": 10**9}, "seq_len"),
        ({"method": "evopress", "options": {"generations": 10**9}}, "generations"),
        ({"method": "evopress", "options": {"selection_tokens": [2048, 10**12]}}, "selection_tokens"),
        ({"method": "blockpruner", "options": {"windows": 10**6}}, "windows"),
        ({"options": {"stage2_windows": 10**6}}, "stage2_windows"),
        ({"sparsity": float("nan")}, "sparsity"),
        ({"calibration": ["/d/t.txt"] * 100}, "calibration"),
    ],
)
def test_costly_or_malformed_fields_are_refused_with_their_name(change, field):
    with pytest.raises(InvalidSpec, match=field):
        parse_spec({**BASE, **change})


def test_sweep_options_are_bounded_too():
    with pytest.raises(InvalidSpec, match="generations"):
        parse_sweep_spec({**{k: v for k, v in BASE.items() if k != "sparsity"}, "sparsities": [0.5],
                          "methods": ["evopress"], "options": {"evopress": {"generations": 10**9}}})


@pytest.mark.parametrize("text", ["/d/t.txt:0:1e23", "/d/t.txt:-1:5", "/d/t.txt:0:1.5", "/d/t.txt:0:99999999999",
                                  "/d/t.txt\n", "/d/t\x00.txt"])
def test_data_sources_with_malformed_ranges_are_refused(text):
    with pytest.raises(InvalidSpec):
        DataSource.parse(text)


def test_plain_ranges_and_paths_with_colons_still_parse():
    assert DataSource.parse("/d/t.txt:3:10") == DataSource("/d/t.txt", 3, 10)
    assert DataSource.parse("/d/t.txt::10") == DataSource("/d/t.txt", None, 10)
    assert DataSource.parse("c4") == DataSource("c4")
    assert DataSource.parse("C:/data/t.txt") == DataSource("C:/data/t.txt")


def test_defaults_and_bounds_at_the_edge_are_accepted():
    spec = parse_spec({**BASE, "seed": 2**63 - 1, "calibration_windows": 4096,
                       "method": "evopress", "options": {"generations": 100_000}})
    assert spec.seed == 2**63 - 1
