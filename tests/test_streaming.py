"""train.streaming: a streamed dataset cut into windows, its position kept by checkpoints, a resumed streamed run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import EOS
from train_helpers import TINY_MODEL, read_metrics, train_cli, without_timing

from train import corpus as C
from train import windows as W


@pytest.fixture(scope="module")
def stream_documents(tmp_path_factory):
    """Documents in a local JSON-lines file, which datasets streams offline, and their texts."""
    from pydoc_data.topics import topics

    texts = [topics[key][:700] for key in sorted(topics)[:40]] + [""]  # an empty document too
    path = tmp_path_factory.mktemp("stream") / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path, texts


def open_json_stream(path):
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)


def test_a_stream_is_cut_into_the_windows_token_files_hold_and_resumes_where_it_stopped(
    stream_documents, small_tokenizer
):
    from train.streaming import DocumentTokens, StreamedWindows

    path, texts = stream_documents
    context, stride = 16, 11
    stream = StreamedWindows(DocumentTokens(open_json_stream(path), "text", small_tokenizer), context, stride, 1, 0)
    whole = np.array(small_tokenizer.encode(EOS.join(texts), add_special_tokens=False))
    expected = W.TokenWindows(whole, context, stride)
    in_order = [stream.next_window() for _ in range(len(expected))]  # a buffer of 1 draws in order
    assert [window.tolist() for window in in_order] == [
        torch.cat([expected[i][0], expected[i][1][-1:]]).tolist() for i in range(len(expected))
    ]

    def shuffled():
        return StreamedWindows(DocumentTokens(open_json_stream(path), "text", small_tokenizer), context, stride, 20, 7)

    first = shuffled()
    before = [first.next_window() for _ in range(30)]
    state = first.state_dict()
    after = [first.next_window() for _ in range(len(expected) + 40)]  # past the end: the next epoch
    # Drawn from the stream's windows, out of order.
    assert set(map(tuple, before)) <= set(map(tuple, in_order)) and len(set(map(tuple, before))) == 30
    assert [window.tolist() for window in before] != [window.tolist() for window in in_order[:30]]
    resumed = shuffled()
    resumed.load_state_dict(state)
    assert [window.tolist() for window in (resumed.next_window() for _ in after)] == [w.tolist() for w in after]


def test_a_stream_position_survives_a_checkpoint_file(tmp_path, stream_documents, small_tokenizer):
    from train.streaming import DocumentTokens, StreamedWindows

    path, _ = stream_documents
    make = lambda: StreamedWindows(DocumentTokens(open_json_stream(path), "text", small_tokenizer), 8, 8, 5, 3)  # noqa: E731
    first = make()
    batches = first.batches(2)
    next(batches)
    first.save(tmp_path)
    expected = [next(batches) for _ in range(3)]
    resumed = make()
    resumed.load(tmp_path)
    for (inputs, targets), (expected_inputs, expected_targets) in zip(resumed.batches(2), expected):
        assert torch.equal(inputs, expected_inputs) and torch.equal(targets, expected_targets)
        assert inputs.shape == (2, 8) and torch.equal(inputs[:, 1:], targets[:, :-1])
    with pytest.raises(C.DataError, match="has no stream position for process 0"):
        make().load(tmp_path / "elsewhere")


@pytest.fixture(scope="module")
def stream_dataset(tmp_path_factory) -> Path:
    """A local dataset directory of JSON lines, one document a row: datasets streams it offline."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("stream-dataset")
    rows = "".join(json.dumps({"text": topics[key][:1500]}) + "\n" for key in sorted(topics)[:60])
    (root / "documents.jsonl").write_text(rows, encoding="utf-8")
    return root


@pytest.mark.slow
def test_a_streamed_run_resumed_from_a_checkpoint_reproduces_the_uninterrupted_run(
    tmp_path, stream_dataset, cache, capsys
):
    """--streaming tokenises as it trains; a checkpoint keeps the stream's position (the dataset's, the tokens in
    hand, the shuffle buffer and its generator), so resuming from it gives the same metrics and weights, bit for
    bit (but for what the wall clock measures), as the run that went on."""
    args = [
        "--dataset",
        str(stream_dataset),
        "--streaming",
        "--cache-dir",
        str(cache),
        *TINY_MODEL,
        "--batch-size",
        "4",
        "--eval-iter",
        "2",
        "--max-steps",
        "12",
        "--eval-freq",
        "3",
        "--save-steps",
        "6",
        "--shuffle-buffer",
        "64",
        "--dropout",
        "0.1",
        "--lr",
        "3e-3",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert train_cli(args) == 0
    printed = capsys.readouterr().out
    assert "(streamed)" in printed and "shuffle buffer of 64" in printed
    records = read_metrics(tmp_path / "run")
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    assert [record["step"] for record in records] == [0, 3, 6, 9, 12]
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.2  # it learns (still warming up at step 12)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "checkpoint-6" / "stream_state_0.npz").is_file()

    shutil.rmtree(checkpoints / "checkpoint-12")  # as if killed after the save at step 6
    assert train_cli([*args, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert without_timing(read_metrics(tmp_path / "run")) == without_timing(records)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
