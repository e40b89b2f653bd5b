"""The `twossp` command line on the real stories260k model, and its refusals of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twossp_core.cli.main import main

REPORT_KEYS = {
    "method", "sparsity_target", "sparsity_achieved", "removed_attention", "kept_ffn_neurons", "params",
    "perplexity", "timings", "throughput_tokens_per_s",
}


def _twossp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("twossp")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "twossp_core.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ}, timeout=600)


@pytest.mark.slow
def test_contract_command_writes_report_and_loadable_model(stories_model, stories_text, tmp_path):
    out = tmp_path / "OUT"
    result = _twossp(
        "prune", "--model", str(stories_model), "--sparsity", "0.375",
        "--calibration", f"{stories_text}:0:500", "--eval", f"{stories_text}:500:1000",
        "--doc-separator", "<|endoftext|>", "--seq-len", "512", "--out", str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= report.keys()
    assert report["method"] == "2ssp" and report["sparsity_target"] == 0.375
    p = report["params"]
    assert report["sparsity_achieved"] == pytest.approx(1 - p["blocks_after"] / p["blocks_before"])
    assert abs(report["sparsity_achieved"] - 0.375) < 0.01 and report["warnings"] == []
    assert report["removed_attention"] == sorted(report["removed_attention"])
    assert report["data"]["calibration_windows"] == 32 and report["data"]["seq_len"] == 512
    (row,) = report["perplexity"]
    assert 1 < row["dense"] < row["pruned"]
    assert {"stage1_s", "stage2_s", "total_s"} <= report["timings"].keys()
    assert report["throughput_tokens_per_s"]["dense"] > 0 and report["throughput_tokens_per_s"]["pruned"] > 0
    assert "perplexity" in result.stdout and "achieved" in result.stdout

    # the saved model evaluates to the pruned perplexity the report states
    ev = _twossp("eval", "--model", str(out), "--eval", f"{stories_text}:500:1000", "--doc-separator",
                 "<|endoftext|>", "--seq-len", "512", "--json", "--no-throughput", "--no-progress")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["perplexity"][0]["perplexity"] == pytest.approx(row["pruned"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_other_sparsities(stories_model, stories_text, tmp_path, sparsity, capsys):
    code = main([
        "prune", "--model", str(stories_model), "--sparsity", str(sparsity),
        "--calibration", f"{stories_text}:0:500", "--eval", f"{stories_text}:500:600",
        "--doc-separator", "<|endoftext|>", "--seq-len", "512", "--out", str(tmp_path / "o"),
        "--no-throughput", "--no-progress", "--json",
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    # K moves to the nearest multiple of 8: at most 4 of 172 neurons x 192 parameters x 5 blocks = 1.35 %
    assert abs(report["sparsity_achieved"] - sparsity) < 0.0135
    assert report["kept_ffn_neurons"] % 8 == 0
    assert report["perplexity"][0]["pruned"] > report["perplexity"][0]["dense"]


@pytest.mark.slow
def test_portable_export_is_a_plain_model_with_the_reported_perplexity(stories_model, stories_text, tmp_path, capsys):
    out = tmp_path / "o"
    data = ["--eval", f"{stories_text}:500:560", "--doc-separator", "<|endoftext|>", "--seq-len", "512"]
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.375", "--calibration",
                 f"{stories_text}:0:500", *data, "--out", str(out), "--export", "portable", "--no-throughput",
                 "--no-progress", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed_attention"]  # something had to be rebuilt
    config = json.loads((out / "config.json").read_text())
    assert "twossp_structure" not in config and not (out / "modeling_twossp.py").exists()
    assert config["twossp"]["export"] == "portable"
    assert report["export"]["format"] == "portable"
    assert report["export"]["stored_params"] > report["params"]["total_after"]  # the zeroed attention modules
    assert main(["eval", "--model", str(out), *data, "--json", "--no-throughput", "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["perplexity"][0]["perplexity"]
    assert evaluated == pytest.approx(report["perplexity"][0]["pruned"], rel=1e-5)


@pytest.mark.slow
def test_export_turns_a_compact_directory_portable(stories_model, stories_text, tmp_path, capsys):
    compact, portable = tmp_path / "compact", tmp_path / "portable"
    data = ["--eval", f"{stories_text}:500:560", "--doc-separator", "<|endoftext|>", "--seq-len", "512"]
    assert main(["prune", "--model", str(stories_model), "--sparsity", "0.375", "--calibration",
                 f"{stories_text}:0:500", *data, "--out", str(compact), "--no-throughput", "--no-progress",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (compact / "modeling_twossp.py").exists()
    assert main(["export", "--model", str(compact), "--out", str(portable)]) == 0
    assert "portable model written" in capsys.readouterr().out
    config = json.loads((portable / "config.json").read_text())
    assert "twossp_structure" not in config and not (portable / "modeling_twossp.py").exists()
    assert config["twossp"]["method"] == "2ssp" and config["twossp"]["export"] == "portable"
    assert main(["eval", "--model", str(portable), *data, "--json", "--no-throughput", "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["perplexity"][0]["perplexity"]
    assert evaluated == pytest.approx(report["perplexity"][0]["pruned"], rel=1e-5)
    # refusals: the same directory, a directory that is not a model
    assert main(["export", "--model", str(compact), "--out", str(compact)]) != 0
    assert main(["export", "--model", str(tmp_path), "--out", str(tmp_path / "x")]) != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sparsity", "1.5"], "sparsity"),
        (["--sparsity", "0.5", "--option", "alpha=-2"], "alpha"),
        (["--sparsity", "0.5", "--option", "bogus=1"], "bogus"),
        (["--sparsity", "0.1", "--option", "num_attention_to_prune=5"], "missing-eval.txt"),
        (["--sparsity", "0.5", "--calibration", "/nonexistent/file.txt"], "no such file"),
        (["--sparsity", "0.25", "--method", "slicegpt", "--export", "portable"], "portable"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(stories_model, tmp_path, capsys, args, needle):
    code = main(["prune", "--model", str(stories_model), "--out", str(tmp_path / "o"), "--no-progress",
                 "--eval", str(tmp_path / "missing-eval.txt"), *args])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_infeasible_target_is_refused_before_loading(stories_model, stories_text, tmp_path, capsys):
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.1", "--option",
                 "num_attention_to_prune=5", "--calibration", str(stories_text), "--eval", str(stories_text),
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "more than the target" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("command", ["prune", "eval"])
def test_a_missing_local_model_is_named_before_any_progress(tmp_path, capsys, monkeypatch, stories_text, command):
    monkeypatch.chdir(tmp_path)
    for model in ("../data/models/nope", "/nonexistent/model", str(tmp_path / "nope")):
        args = ["--sparsity", "0.5", "--out", "o"] if command == "prune" else []
        assert main([command, "--model", model, "--eval", str(stories_text), *args]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
        assert errors == [f"twossp: error: model {model!r}: no such local model directory"]  # one line, no progress


def test_hub_datasets_without_network_fail_at_once(stories_model, stories_text, tmp_path, capsys, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: as good as offline
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.5", "--eval", str(stories_text),
                 "--out", str(tmp_path / "o")])  # default calibration: c4 from the hub
    assert code == 2 and time.monotonic() - start < 10
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert "'c4'" in err and "cannot be reached" in err and "--calibration" in err
    assert not (tmp_path / "o").exists()


def test_a_txt_range_without_separator_is_refused_before_loading(stories_model, stories_text, tmp_path, capsys):
    # the README command with --doc-separator forgotten: the file is one document, so 500:1000 selects nothing
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.375", "--calibration",
                 f"{stories_text}:0:500", "--eval", f"{stories_text}:500:1000", "--out", str(tmp_path / "o")])
    assert code == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]  # no progress bar
    assert ":500:1000" in err and "one document" in err and "--doc-separator" in err
    code = main(["eval", "--model", str(stories_model), "--eval", f"{stories_text}:5000:6000",
                 "--doc-separator", "<|endoftext|>"])
    assert code == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert "starts at document 5000 but the file has only 1000 documents" in err


@pytest.mark.slow
def test_a_sparsity_far_from_the_target_is_warned(stories_model, stories_text, tmp_path, capsys):
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.99", "--calibration",
                 f"{stories_text}:0:100", "--eval", f"{stories_text}:100:200", "--doc-separator", "<|endoftext|>",
                 "--seq-len", "128", "--calibration-windows", "4", "--eval-windows", "2", "--no-throughput",
                 "--no-progress", "--out", str(tmp_path / "o")])
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["sparsity_achieved"] == pytest.approx(0.9648, abs=1e-4)  # every attention gone, K at 8
    warning = "achieved sparsity 0.9648 is 2.5 points below the target 0.9900"
    assert [w[: len(warning)] for w in report["warnings"]] == [warning]
    assert f"twossp: warning: {warning}" in capsys.readouterr().err


def test_unknown_model_and_busy_out_dir(tmp_path, capsys, stories_model, stories_text):
    assert main(["prune", "--model", "no-such-org/no-such-model", "--sparsity", "0.5", "--out", str(tmp_path / "o"),
                 "--calibration", str(stories_text), "--eval", str(stories_text), "--no-progress"]) != 0
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert "no-such-org/no-such-model" in err and ("cannot load" in err or "cannot be reached" in err)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["prune", "--model", str(stories_model), "--sparsity", "0.5", "--out", str(busy)]) != 0
    assert "not empty" in capsys.readouterr().err
    assert (busy / "keep.txt").read_text() == "x"


def test_summary_names_every_kind_of_removal():
    from twossp_core.cli.summary import format_summary

    report = {
        "method": "blockpruner", "sparsity_target": 0.5, "sparsity_achieved": 0.5,
        "params": {"blocks_before": 10, "blocks_after": 5, "total_before": 20, "total_after": 15},
        "removed_attention": [1], "removed_mlp": [3], "removed_blocks": [4], "kept_ffn_neurons": None,
        "perplexity": [], "timings": {"prune_s": 1.0},
    }
    lines = format_summary(report).splitlines()
    assert "removed attention blocks: [1]" in lines
    assert "removed FFN blocks: [3]" in lines
    assert "removed blocks: [4]" in lines


def test_summary_says_when_every_held_out_set_is_from_the_calibration_source():
    from twossp_core.cli.summary import format_summary
    from twossp_core.data.held_out import held_out_summary

    def summary(domains: list[str]) -> str:
        rows = [{"dataset": f"set{i}", "domain": d, "dense": 10.0, "pruned": 20.0} for i, d in enumerate(domains)]
        report = {"method": "2ssp", "sparsity_target": 0.5, "sparsity_achieved": 0.5, "kept_ffn_neurons": None,
                  "params": {"blocks_before": 10, "blocks_after": 5, "total_before": 20, "total_after": 15},
                  "perplexity": rows, "held_out": held_out_summary(rows), "timings": {"prune_s": 1.0}}
        return format_summary(report)

    assert "every set is from the calibration source" in summary(["in-domain"])
    assert "every set is from the calibration source" not in summary(["in-domain", "out-of-domain"])
    assert "every set is from the calibration source" not in summary(["out-of-domain"])


def test_version(capsys):
    from twossp_core import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"twossp {__version__}"


def test_the_output_directories_the_docs_write_are_git_ignored():
    import re

    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    docs = "\n".join(p.read_text() for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))])
    # bare names only: a path such as bench/results/... names the committed results a bench script writes
    names = set(re.findall(r"--out ([A-Za-z0-9_.-]+)(?![A-Za-z0-9_./-])", docs)) - {"DIR", "DIR2"}  # placeholders
    assert "OUT" in names
    for name in sorted(names):
        check = subprocess.run(["git", "check-ignore", "-q", f"{name}/model.safetensors"], cwd=repo)
        assert check.returncode == 0, f"{name}/ is not ignored by .gitignore"
