"""Errors in the caller's terms: the request's JSON fields for the API (and the library), the flags for the command
line; every bad field at once; what is known before loading is checked before loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from twossp_core.cli.main import build_parser, main
from twossp_core.cli.terms import flags_of, in_cli_terms
from twossp_core.errors import DataError, FieldProblem, InvalidSpec
from twossp_core.plan.spec import parse_spec, parse_sweep_spec
from twossp_core.preflight import check_model


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "usage:" not in err, err  # one line, not the command's usage
    return err


def test_the_command_line_names_its_flags_and_every_bad_one(
    capsys: pytest.CaptureFixture[str], stories_model: Path, stories_text: Path, tmp_path: Path
) -> None:
    base = ["prune", "--model", str(stories_model), "--out", str(tmp_path / "out"), "--no-progress"]
    err = _error(capsys, *base, "--method", "nope", "--sparsity", "0.5")
    assert err.startswith("twossp: error: unknown method 'nope'; available: 2ssp, 2ssp-refit")

    err = _error(capsys, *base, "--sparsity", "1.5", "--seq-len", "4", "--option", "nope=1")
    assert "--sparsity: Input should be less than 1" in err and "--seq-len: Input should be greater" in err
    assert "--option nope: Extra inputs are not permitted" in err and "seq_len" not in err

    err = _error(capsys, *base, "--sparsity", "0.5", "--calibration", f"{stories_text}:0:10",
                 "--eval", f"{stories_text}:10:20", "--export", "gguf", "--export-option", "dtype=f16")
    assert "--export-option dtype: Extra inputs are not permitted" in err

    err = _error(capsys, *base, "--sparsity", "0.5", "--calibration", f"{stories_text}:0:10",
                 "--eval", f"{stories_text}:10:20")
    assert "(`--doc-separator`)" in err and "doc_separator" not in err

    err = _error(capsys, "sweep", "--model", str(stories_model), "--methods", "2ssp,nope", "--sparsities", "0.25",
                 "--option", "2ssp.nope=1", "--out", str(tmp_path / "sweep"))
    assert "unknown method 'nope'" in err and "--option 2ssp.nope: Extra inputs are not permitted" in err


def test_a_request_names_its_json_fields_and_every_bad_one() -> None:
    body = {"model": "org/model", "sparsity": 1.5, "seq_len": 4, "options": {"nope": 1}, "export": "gguf",
            "export_options": {"dtype": "f16"}}
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(body, strict=True)
    message = str(caught.value)
    for part in ("sparsity: Input should be less than 1", "seq_len: Input should be greater than or equal to 8",
                 "options for 2ssp: nope: Extra inputs are not permitted",
                 "export options for gguf: dtype: Extra inputs are not permitted"):
        assert part in message
    assert "--" not in message
    with pytest.raises(InvalidSpec) as caught:
        parse_sweep_spec({"model": "org/model", "methods": ["nope", "2ssp"], "sparsities": [2],
                          "options": {"2ssp": {"alpha": "x"}}}, strict=True)
    message = str(caught.value)
    assert "every sparsity must be strictly between 0 and 1" in message and "unknown method 'nope'" in message
    assert "options for 2ssp: alpha" in message


def test_each_problem_carries_its_field_as_data() -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"model": "org/model", "sparsity": 1.5, "options": {"nope": 1}, "export": "gguf",
                    "export_options": {"type": "f64"}, "heal": {"steps": 0}}, strict=True)
    fields = {problem.field: problem for problem in caught.value.problems}
    assert set(fields) == {"sparsity", "heal.steps", "options.nope", "export_options.type"}
    assert fields["options.nope"].message == "options for 2ssp: nope: Extra inputs are not permitted"
    assert fields["options.nope"].reason == "Extra inputs are not permitted"
    with pytest.raises(InvalidSpec) as caught:
        parse_sweep_spec({"model": "org/model", "methods": ["2ssp", "nope"], "sparsities": [0.5],
                          "options": {"2ssp": {"alpha": "x"}}}, strict=True)
    assert {p.field for p in caught.value.problems} == {"methods", "options.2ssp.alpha"}
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"model": "org/model", "sparsity": 0.5, "eval": ["wikitext2", "a.txt:5:2"]})
    assert [p.field for p in caught.value.problems] == ["eval.1"]
    # the field survives a trip between processes
    copy = pickle.loads(pickle.dumps(DataError("data source 'x': no such file", field="eval.0")))
    assert copy.field == "eval.0" and str(copy) == "data source 'x': no such file"


def test_the_command_line_names_the_flag_from_the_field_not_from_the_wording() -> None:
    flags = flags_of(build_parser())
    error = InvalidSpec("several", parts=[
        FieldProblem("options.2ssp.alpha", "the alpha of 2ssp is bad", "must be a number"),
        FieldProblem("seq_len", "seq_len: too short", "too short"),
        FieldProblem("eval.1", "the second source is missing", "no such file"),
        FieldProblem("max_host_memory", "not a size"),  # no reason: the message as it is
        FieldProblem(None, "needs `doc_separator`"),
    ])
    assert in_cli_terms(error, flags) == ("--option 2ssp.alpha: must be a number; --seq-len: too short; "
                                          "--eval: no such file; not a size; needs `--doc-separator`")


def test_a_hub_model_is_checked_from_its_config_before_it_is_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stories_text: Path
) -> None:
    """The DeciLM export of a hub model whose FFN width it cannot hold is refused from the cached config.json,
    before any weight is read."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 512,
        "max_position_embeddings": 128,
    }))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    data = {"calibration": [f"{stories_text}:0:10"], "eval": [f"{stories_text}:10:20"],
            "doc_separator": "<|endoftext|>"}
    spec = parse_spec({"model": "org/tiny", "method": "shortgpt", "sparsity": 0.25, "export": "decilm", **data})
    with pytest.raises(InvalidSpec, match="multiples of 256; this model keeps 172"):
        check_model(spec, relative_paths=False)  # the cache only: the service never downloads here
    check_model(parse_spec({"model": "org/other", "sparsity": 0.25, "export": "decilm", **data}),
                relative_paths=False)  # not at hand: left to the load
