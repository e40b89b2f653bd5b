"""Data sources and windows: PATH[:START:END], .txt/.jsonl/.parquet, joining, consecutive windows."""

from __future__ import annotations

import json

import pytest
from tiny_models import tokenizer_for

from twossp_core.data.sources import iter_documents
from twossp_core.data.windows import JOINER, load_windows, tokenize
from twossp_core.errors import DataError, InvalidSpec
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import parse_spec


@pytest.mark.parametrize(
    ("text", "name", "start", "end"),
    [
        ("c4", "c4", None, None),
        ("data/x.txt:0:500", "data/x.txt", 0, 500),
        ("data/x.txt:10:", "data/x.txt", 10, None),
        ("data/x.txt::7", "data/x.txt", None, 7),
        ("/abs/with:colon.txt", "/abs/with:colon.txt", None, None),
    ],
)
def test_source_parsing(text, name, start, end):
    src = DataSource.parse(text)
    assert (src.name, src.start, src.end) == (name, start, end)


def test_empty_range_is_refused():
    with pytest.raises(InvalidSpec, match="END"):
        DataSource.parse("x.txt:5:5")


def test_txt_split_on_separator_stripped_and_sliced(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text(" one \n<|endoftext|>\ntwo\n<|endoftext|>\n\n<|endoftext|>\nthree\n<|endoftext|>\n")
    docs = list(iter_documents(DataSource.parse(f"{f}:1:3"), "calibration", "<|endoftext|>"))
    assert docs == ["two", "three"]
    whole = list(iter_documents(DataSource.parse(str(f)), "calibration", None))
    assert whole == [f.read_text()]


def test_jsonl_and_parquet_rows_are_documents(tmp_path):
    rows = [{"text": f"doc {i}", "url": "u"} for i in range(5)]
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert list(iter_documents(DataSource.parse(f"{j}:2:4"), "eval")) == ["doc 2", "doc 3"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in rows]}), p)
    assert list(iter_documents(DataSource.parse(f"{p}:3:"), "eval")) == ["doc 3", "doc 4"]


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(iter_documents(DataSource.parse(str(tmp_path / "missing.txt")), "eval"))
    bad = tmp_path / "x.csv"
    bad.write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_documents(DataSource.parse(str(bad)), "eval"))
    j = tmp_path / "bad.jsonl"
    j.write_text('{"title": "no text"}\n')
    with pytest.raises(DataError, match="line 1"):
        list(iter_documents(DataSource.parse(str(j)), "eval"))


def test_windows_are_consecutive_cuts_of_the_joined_tokens(tmp_path):
    tok = tokenizer_for(96)
    docs = ["the cat sat", "a dog ran to the park", "it was fun"] * 20
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    expected = tokenize(tok, JOINER.join(docs))
    windows = load_windows(DataSource.parse(str(f)), tok, seq_len=16, role="eval")
    assert windows.shape == (len(expected) // 16, 16)
    assert windows.flatten().tolist() == expected[: windows.numel()]
    capped = load_windows(DataSource.parse(str(f)), tok, seq_len=16, role="calibration", max_windows=3)
    assert capped.tolist() == windows[:3].tolist()


def test_too_little_text_for_one_window_is_an_error(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("tiny")
    with pytest.raises(DataError, match="fewer than one window"):
        load_windows(DataSource.parse(str(f)), tokenizer_for(96), seq_len=64, role="eval")


def test_stories_protocol_windows(stories_model, stories_text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stories_model)
    sep = "<|endoftext|>"
    docs = [d.strip() for d in stories_text.read_text().split(sep) if d.strip()][:500]
    expected = tok("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    windows = load_windows(DataSource.parse(f"{stories_text}:0:500"), tok, seq_len=512, role="calibration",
                           doc_separator=sep, max_windows=32)
    assert windows.shape == (32, 512)
    assert windows.flatten().tolist() == expected[: 32 * 512]


@pytest.mark.parametrize(
    ("field", "value"),
    [("sparsity", 0), ("sparsity", 1), ("sparsity", -1), ("sparsity", "abc"), ("method", "nope"),
     ("options", {"alpha": -1}), ("options", {"unknown": 1}), ("seq_len", 2), ("dtype", "int8")],
)
def test_bad_requests_name_the_field(field, value):
    data = {"model": "org/model", "sparsity": 0.5, field: value}
    with pytest.raises(InvalidSpec) as err:
        parse_spec(data)
    assert field in str(err.value) or (field == "method" and "unknown method" in str(err.value))
