"""Using a model directory: generate, evaluate (sliding-window loss, perplexity, bits per byte), push to a local hub,
export as plain GPT-2, and the clear refusals of bad input. Tiny models; the GPT-2 tokenizer when ../shared/data has
it, otherwise a small byte-level BPE trained here."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from conftest import REPO_ROOT, SHARED_DATA, assert_same_logits, run_without_project, tiny_config
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast, TextStreamer

import convert.gpt2_export
import use.evaluate
import use.generate
import use.push
import use.scoring
from common.errors import InputError
from common.model_dir import inference_device, load_model_directory, save_model_directory
from common.tokenizer import load_tokenizer
from convert.gpt2_export import export_gpt2, to_gpt2
from modeling_gptscratch import GPTScratchForCausalLM
from use.generate import EndOfTextStreamer, encode_prompt, generate_text
from use.push import push_to_local_hub, repo_path
from use.scoring import check_text_file, evaluate_text, score_token_ids, sliding_windows, text_token_ids

PARAGRAPH = (
    "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no great "
    "surprise to me to hear that, in the height of his glory, he had dropped his painting, married a rich widow, "
    "and established himself in a villa on the Riviera. Naïve café talk — « déjà vu » — costs more bytes "
    "than letters: 日本語 too.\n"
)
TEXT = PARAGRAPH * 3
PROMPT = "Every effort moves you"


def byte_level_bpe(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with `<|endoftext|>`, trained on `text`; vocab_size 257 gives bytes only."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def ascii_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character vocabulary of ASCII letters with an unknown token: what it has not seen becomes [UNK]."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]"])
    tokenizer.train_from_iterator(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def tiny_model_for(tokenizer, seed: int = 0, **overrides) -> GPTScratchForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **overrides)
    return GPTScratchForCausalLM(config).eval()


def file_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and modification time: a fingerprint of what was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs `python ARGS` in a fresh interpreter (seconds to import torch and transformers: tests using it are slow)."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def run_clis(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Runs independent commands two at a time (each spends seconds importing torch and transformers)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda command: run_cli(*command), commands))


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    if (SHARED_DATA / "gpt2-bpe").is_dir():
        return load_tokenizer(SHARED_DATA / "gpt2-bpe")
    return byte_level_bpe(TEXT, vocab_size=320)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A converted-style model directory: the model files and the tokenizer, no training record."""
    return save_model_directory(tiny_model_for(tokenizer), tokenizer, tmp_path_factory.mktemp("models") / "converted")


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tokenizer) -> Path:
    """A trained model directory as the trainer leaves it: model files plus summary, metrics, plots, checkpoints."""
    directory = save_model_directory(
        tiny_model_for(tokenizer, seed=1), tokenizer, tmp_path_factory.mktemp("models") / "trained"
    )
    summary = {
        "source": "the-verdict.txt",
        "tokenizer": "gpt2",
        "steps": 1234,
        "epochs": 3,
        "tokens_seen": 567890,
        "train_loss": 3.21012,
        "val_loss": 4.56034,
        "train_perplexity": 24.7812,
        "val_perplexity": 95.6243,
    }
    (directory / "training_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (directory / "metrics.jsonl").write_text('{"step": 1234, "val_loss": 4.56034}\n', encoding="utf-8")
    (directory / "loss_plot.png").write_bytes(b"\x89PNG\r\n\x1a\nplot")
    (directory / "loss_plot.pdf").write_bytes(b"%PDF-1.4 plot")
    (directory / "checkpoints" / "step-1234").mkdir(parents=True)
    (directory / "checkpoints" / "step-1234" / "optimizer.bin").write_bytes(b"state")
    return directory


# --- generate --------------------------------------------------------------------------------------------------------


class TokenRecorder:
    """A streamer that keeps what model.generate hands it."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("prompt_tokens, new_tokens", [(5, 12), (10, 40), (45, 10)])  # in, past, and over the window
@pytest.mark.parametrize("temperature, top_k, seed", [(0.0, None, None), (1.0, 5, 7), (1.5, None, 3)])
def test_streamed_tokens_are_the_generated_ones(tiny_model, prompt_tokens, new_tokens, temperature, top_k, seed):
    prompt = torch.randint(0, 97, (1, prompt_tokens), generator=torch.Generator().manual_seed(prompt_tokens))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    streamer = TokenRecorder()
    streamed = tiny_model.generate(
        prompt, max_new_tokens=new_tokens, temperature=temperature, top_k=top_k, generator=generator, streamer=streamer
    )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    expected = tiny_model.generate(
        prompt, max_new_tokens=new_tokens, temperature=temperature, top_k=top_k, generator=generator
    )
    assert torch.equal(streamed, expected)
    assert streamer.puts[0] == prompt.tolist() and streamer.ended
    assert [token for put in streamer.puts[1:] for token in put] == expected[0, prompt_tokens:].tolist()


def test_generate_text_stops_at_eos_unless_told(model_dir, tokenizer):
    model, _ = load_model_directory(model_dir)
    prompt_ids = encode_prompt(tokenizer, PROMPT, model.config.vocab_size)
    greedy = model.generate(torch.tensor([prompt_ids]), max_new_tokens=6, temperature=0, eos_token_id=[])
    greedy = greedy[0, len(prompt_ids) :].tolist()
    model.generation_config.eos_token_id = greedy[2]  # make the third greedy token the end of text
    stop = greedy.index(greedy[2])  # (or an earlier repeat of it)
    stopped = generate_text(model, PROMPT, max_new_tokens=6, tokenizer=tokenizer)
    assert stopped == tokenizer.decode(prompt_ids + greedy[:stop], clean_up_tokenization_spaces=False)
    full = generate_text(model, PROMPT, max_new_tokens=6, stop_at_eos=False, tokenizer=tokenizer)
    assert full == tokenizer.decode(prompt_ids + greedy, clean_up_tokenization_spaces=False)


def test_generate_text_streams_each_token_and_is_reproducible(model_dir, tokenizer):
    class Recorder(TextStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            self.puts, self.printed = 0, []

        def put(self, value):
            self.puts += 1
            super().put(value)

        def on_finalized_text(self, text, stream_end=False):
            self.printed.append(text + ("\n" if stream_end else ""))

    streamer = Recorder()
    text = generate_text(model_dir, PROMPT, 8, temperature=1.0, top_k=20, seed=5, stop_at_eos=False, streamer=streamer)
    assert streamer.puts == 1 + 8  # the prompt, then every new token as it is chosen
    assert "".join(streamer.printed) == text + "\n"
    assert text.startswith(PROMPT)
    assert generate_text(model_dir, PROMPT, 8, temperature=1.0, top_k=20, seed=5, stop_at_eos=False) == text
    assert generate_text(model_dir, PROMPT, 8, temperature=1.0, top_k=20, seed=6, stop_at_eos=False) != text


@pytest.fixture(scope="module")
def eos_dir(model_dir, tmp_path_factory) -> tuple[Path, str, int]:
    """(directory, prompt, index of the stopping token): the model of `model_dir` with a generation config that
    ends text at `<|endoftext|>` and at the 4th token it samples (seed 42, where the command runs it) after a prompt
    that itself holds `<|endoftext|>`."""
    prompt = "Every effort<|endoftext|> moves you"
    model, tokenizer = load_model_directory(model_dir, device=inference_device())
    prompt_ids = encode_prompt(tokenizer, prompt, len(tokenizer))
    sampled = model.generate(
        torch.tensor([prompt_ids], device=model.device),
        max_new_tokens=12,
        temperature=1.0,
        top_k=20,
        eos_token_id=[],
        generator=torch.Generator(device=model.device).manual_seed(42),
    )
    new_ids = sampled[0, len(prompt_ids) :].tolist()
    model.generation_config.eos_token_id = [new_ids[3], tokenizer.eos_token_id]
    directory = save_model_directory(model, tokenizer, tmp_path_factory.mktemp("models") / "eos")
    return directory, prompt, min(i for i, token in enumerate(new_ids) if token in (new_ids[3], tokenizer.eos_token_id))


class PrintRecorder:
    """Wraps EndOfTextStreamer so a test sees each piece of text as it is printed, with how many puts preceded it."""

    def __init__(self, monkeypatch):
        self.puts, self.printed = 0, []
        put, on_finalized_text = EndOfTextStreamer.put, EndOfTextStreamer.on_finalized_text

        def counting_put(streamer, value):
            self.puts += 1
            put(streamer, value)

        def recording_print(streamer, text, stream_end=False):
            self.printed.append((self.puts, text, stream_end))
            on_finalized_text(streamer, text, stream_end)

        monkeypatch.setattr(EndOfTextStreamer, "put", counting_put)
        monkeypatch.setattr(EndOfTextStreamer, "on_finalized_text", recording_print)


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_generate_cli_streams_what_the_api_returns(eos_dir, tokenizer, monkeypatch, capsys, stop_at_eos):
    """The command prints, as it is generated, exactly the text generate_text returns: an <|endoftext|> typed in
    the prompt shows, the end-of-text token that stops generation does not; with --no-stop-at-eos it shows too."""
    directory, prompt, stop = eos_dir
    recorder = PrintRecorder(monkeypatch)
    argv = [
        "--model",
        directory,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.0",
        "--top-k",
        "20",
        "--seed",
        "42",
    ] + ([] if stop_at_eos else ["--no-stop-at-eos"])
    result = run_main(use.generate.main, argv, capsys)
    expected = generate_text(directory, prompt, 12, temperature=1.0, top_k=20, seed=42, stop_at_eos=stop_at_eos)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert expected.startswith(prompt)  # the typed <|endoftext|> is kept
    # The prompt, then each new token as it is chosen: up to and including the stopping one, or all 12.
    assert recorder.puts == 1 + (stop + 1 if stop_at_eos else 12)
    # The printer is handed the text after every token as it arrives (TextStreamer prints it once a word is
    # complete), not once at the end; the dropped end-of-text token is the one put it does not see.
    assert [puts for puts, _, end in recorder.printed if not end] == list(range(1, recorder.puts + 1 - stop_at_eos))
    assert "".join(text + ("\n" if end else "") for _, text, end in recorder.printed) == expected + "\n"


def test_generate_text_with_a_directory_refuses_a_second_tokenizer(model_dir, tokenizer):
    with pytest.raises(InputError, match="a model directory and a tokenizer; .* leave tokenizer out"):
        generate_text(model_dir, PROMPT, 4, tokenizer=tokenizer)


def test_decoding_settings_are_refused_before_the_model_loads(tmp_path, capsys):
    """The command names its flags, the function its parameters; a missing model directory comes second."""
    absent = tmp_path / "absent"
    cases = {
        "--max-new-tokens must be >= 0, got -1": ["--max-new-tokens", "-1"],
        "--temperature must be a finite number >= 0 (0 is greedy decoding), got -0.5": ["--temperature", "-0.5"],
        "--top-k must be >= 1 (or unset to keep every token), got 0": ["--top-k", "0"],
    }
    for message, flags in cases.items():
        result = run_main(use.generate.main, ["--model", absent, "--prompt", PROMPT, *flags], capsys)
        assert_one_line_error(result, "gptscratch-generate", message)
    for message, arguments in {
        "max_new_tokens must be >= 0": dict(max_new_tokens=-1),
        "temperature must be a finite number >= 0": dict(temperature=-0.5),
        "top_k must be >= 1": dict(top_k=0),
    }.items():
        with pytest.raises(InputError, match=f"^{message}"):
            generate_text(absent, PROMPT, **arguments)


def test_prompts_the_tokenizer_cannot_handle_are_refused(tokenizer):
    with pytest.raises(InputError, match="encodes to no tokens"):
        encode_prompt(tokenizer, "", len(tokenizer))
    with pytest.raises(InputError, match="does not belong to its model"):
        encode_prompt(tokenizer, PROMPT, 10)
    chars = ascii_char_tokenizer()
    with pytest.raises(InputError, match="'é', '日'"):
        encode_prompt(chars, "café 日", len(chars))
    # Python decodes command-line bytes that are not UTF-8 (b"caf\xe9", Latin-1) to lone surrogates.
    with pytest.raises(InputError, match=r"the prompt 'caf\\udce9' is not valid text: '\\udce9' at position 3"):
        encode_prompt(tokenizer, "caf\udce9", len(tokenizer))
    # GPT-2 spells its unknown token <|endoftext|>: written out in a prompt it is that special token, not unknown.
    assert encode_prompt(tokenizer, "a<|endoftext|>b", len(tokenizer))[1] == tokenizer.eos_token_id


# --- evaluate --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens, context, stride", [(2, 4, 4), (10, 4, 4), (11, 4, 4), (50, 8, 3), (37, 16, 1)])
def test_sliding_windows_score_each_token_once_with_enough_history(tokens, context, stride):
    scored = []
    for start, end, count in sliding_windows(tokens, context, stride):
        assert end - start <= context and start % stride == 0
        positions = range(end + 1 - count, end + 1)  # target positions (the input at position p - 1 predicts p)
        for position in positions:
            assert position - start >= min(position, context - stride + 1)  # history kept
        scored += positions
    assert scored == list(range(1, tokens))


def brute_force_nats(model, ids: list[int], context: int, stride: int) -> float:
    """Scores each token alone: one forward pass over exactly its history, which starts at the window that the
    closed form below assigns (window k starts at k * stride and scores targets up to k * stride + context)."""
    total = 0.0
    for position in range(1, len(ids)):
        start = 0 if position <= context else math.ceil((position - context) / stride) * stride
        logits = model(torch.tensor([ids[start:position]])).logits[0, -1]
        total -= torch.log_softmax(logits.double(), dim=-1)[ids[position]].item()
    return total


@pytest.mark.parametrize("stride", [16, 7, 1])
def test_sliding_window_loss_equals_brute_force(tiny_model, stride):
    ids = torch.randint(0, 97, (75,), generator=torch.Generator().manual_seed(3)).tolist()
    nats, tokens = score_token_ids(tiny_model, ids, context_length=16, stride=stride, batch_size=3)
    assert tokens == 74
    assert nats == pytest.approx(brute_force_nats(tiny_model, ids, 16, stride), rel=1e-5)


def test_stride_equal_to_context_equals_the_books_calc_loss_loader(tiny_model):
    """The training loop's validation loss is the book's calc_loss_loader over GPTDatasetV1's windows."""
    from llms_from_scratch.ch02 import GPTDatasetV1
    from llms_from_scratch.ch05 import calc_loss_loader

    class FixedIds:  # GPTDatasetV1 tokenizes text itself; hand it our stream
        def encode(self, text, allowed_special=None):
            return ids

    context = 16
    ids = torch.randint(0, 97, (6 * context + 1,), generator=torch.Generator().manual_seed(4)).tolist()
    dataset = GPTDatasetV1("", FixedIds(), max_length=context, stride=context)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False, drop_last=False)
    with torch.no_grad():
        book_loss = calc_loss_loader(loader, lambda inputs: tiny_model(inputs).logits, "cpu")
    nats, tokens = score_token_ids(tiny_model, ids, context_length=context, stride=context)
    assert tokens == len(dataset) * context
    assert nats / tokens == pytest.approx(book_loss, rel=1e-6)


def test_evaluate_text_reports_loss_perplexity_and_bits_per_byte():
    tokenizer = byte_level_bpe(TEXT, vocab_size=300)
    tiny_model = tiny_model_for(tokenizer)
    texts = [PARAGRAPH, "A second, shorter text."]
    result = evaluate_text(tiny_model, tokenizer, texts, context_length=16, stride=8)
    assert set(result) == {"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}
    # every token of every text is scored: the leading <|endoftext|> predicts the first one
    assert result["tokens"] == sum(len(tokenizer.encode(text)) for text in texts)
    assert result["bytes"] == sum(len(text.encode("utf-8")) for text in texts) > len("".join(texts))
    nats = sum(brute_force_nats(tiny_model, text_token_ids(tokenizer, text), 16, 8) for text in texts)
    assert result["loss"] == pytest.approx(nats / result["tokens"], rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / result["bytes"], rel=1e-5)


def test_bits_per_byte_do_not_depend_on_the_tokenizer():
    """A model that predicts uniformly spends log2(vocab) bits per token, so its bits per byte follow from how many
    tokens each tokenizer needs; with a bytes-only tokenizer (one token per byte) bits per token are bits per byte."""
    merged = byte_level_bpe(TEXT, vocab_size=400)
    bytes_only = byte_level_bpe(TEXT, vocab_size=257)
    results = {}
    for name, tokenizer in (("merged", merged), ("bytes", bytes_only)):
        model = tiny_model_for(tokenizer, context_length=64)
        torch.nn.init.zeros_(model.out_head.weight)  # uniform next-token distribution
        results[name] = evaluate_text(model, tokenizer, [TEXT], stride=32)
        vocab, tokens, size = len(tokenizer), results[name]["tokens"], len(TEXT.encode("utf-8"))
        assert results[name]["bytes"] == size
        assert results[name]["loss"] == pytest.approx(math.log(vocab))
        assert results[name]["bits_per_byte"] == pytest.approx(tokens * math.log2(vocab) / size)
    assert results["bytes"]["tokens"] == len(TEXT.encode("utf-8"))
    assert results["bytes"]["bits_per_byte"] == pytest.approx(results["bytes"]["loss"] / math.log(2))
    assert results["merged"]["tokens"] < results["bytes"]["tokens"]


@pytest.mark.slow
def test_eval_cli_prints_one_json_object(model_dir, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    result = run_cli(
        "-m",
        "use.evaluate",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--stride",
        "8",
        "--batch-size",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    model, tokenizer = load_model_directory(model_dir)
    expected = evaluate_text(model, tokenizer, [TEXT], stride=8)
    assert printed.keys() == expected.keys()
    assert printed == pytest.approx(expected, rel=1e-5)


def test_eval_scores_files_read_in_pieces_as_the_whole_texts(tmp_path, monkeypatch):
    """gptscratch-eval reads each file in pieces and scores windows as their tokens arrive (memory holds a piece and
    a batch): the figures of each whole text tokenised at once and scored in one stream, here with pieces
    (paragraphs) shorter than a window."""
    import train.corpus

    tokenizer = byte_level_bpe(TEXT, vocab_size=300)
    model = tiny_model_for(tokenizer, context_length=128)
    texts = [PARAGRAPH * 12, "A second, shorter text."]
    paths = []
    for index, text in enumerate(texts):
        paths.append(tmp_path / f"{index}.txt")
        paths[-1].write_text(text, encoding="utf-8")
    monkeypatch.setattr(train.corpus, "READ_BLOCK_BYTES", 700)
    streamed = use.scoring.evaluate_files(model, tokenizer, paths, context_length=128, stride=48, batch_size=3)
    nats = tokens = 0
    for text in texts:
        ids = [tokenizer.eos_token_id] + tokenizer.encode(text, add_special_tokens=False)
        text_nats, text_tokens = score_token_ids(model, ids, context_length=128, stride=48, batch_size=3)
        nats, tokens = nats + text_nats, tokens + text_tokens
    assert streamed["tokens"] == tokens == sum(len(tokenizer.encode(text)) for text in texts)
    assert streamed["bytes"] == sum(len(text.encode("utf-8")) for text in texts)
    assert streamed["loss"] == pytest.approx(nats / tokens, rel=1e-6)


def test_a_text_with_no_token_to_score_is_a_usage_error(tokenizer):
    model = tiny_model_for(tokenizer)
    with pytest.raises(InputError, match="the texts hold no token to score"):
        evaluate_text(model, tokenizer, [""])


def test_data_files_that_are_not_text_are_refused(tmp_path):
    (tmp_path / "binary.bin").write_bytes(b"ok\xff\xfe")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match=r"binary.bin is not UTF-8 text \(byte offset 2\)"):
        check_text_file(tmp_path / "binary.bin")
    with pytest.raises(InputError, match="empty.txt is empty"):
        check_text_file(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="does not exist"):
        check_text_file(tmp_path / "absent.txt")


# --- push to a local hub ---------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_push_writes_a_complete_repository_with_the_training_record(trained_dir, tmp_path):
    before = file_tree(trained_dir)
    repo = push_to_local_hub(trained_dir, tmp_path / "hub", "alice/tiny-gpt")
    assert repo == tmp_path / "hub" / "alice" / "tiny-gpt"
    files = {p.name for p in repo.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "modeling_gptscratch.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "training_summary.json",
        "metrics.jsonl",
        "loss_plot.png",
        "loss_plot.pdf",
        ".git",
    } <= files
    assert "checkpoints" not in files
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(repo.stat().st_mode) == 0o777 & ~umask  # readable as any folder, not mkdtemp's 0700
    assert stat.S_IMODE((repo / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert (repo / "loss_plot.png").read_bytes() == (trained_dir / "loss_plot.png").read_bytes()
    config = json.loads((repo / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gptscratch.GPTScratchForCausalLM"
    card = (repo / "README.md").read_text()
    metadata = card.split("---\n")[1]
    for line in ("library_name: transformers", "pipeline_tag: text-generation", "license: apache-2.0", "- gptscratch"):
        assert line in metadata.splitlines()
    for fact in (
        "the-verdict.txt",
        "| Steps | 1,234 |",
        "| Epochs | 3 |",
        "| Tokens seen | 567,890 |",
        "| Final training loss | 3.2101 |",
        "| Final validation loss | 4.5603 |",
        "| Final training perplexity | 24.78 |",
        "| Final validation perplexity | 95.62 |",
        "](loss_plot.png)",
        "trust_remote_code=True",
        "`git show <commit>:config.json`",
    ):
        assert fact in card
    assert "worktree" not in card  # a worktree would put a second checkout inside the hub
    assert git(repo, "rev-list", "--count", "HEAD") == "1"
    assert git(repo, "log", "--format=%s") == "Push trained (gptscratch)"  # the folder's name, not its path
    assert git(repo, "status", "--porcelain") == ""
    assert file_tree(trained_dir) == before
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]


def test_card_of_a_converted_directory_says_what_is_known(model_dir, tmp_path):
    repo = push_to_local_hub(model_dir, tmp_path / "hub", "openai/gpt2-tiny", license="mit")
    card = (repo / "README.md").read_text()
    assert "license: mit" in card
    assert "No training record" in card and "not known" in card
    assert "| Layers / heads / embedding size | 2 / 4 / 32 |" in card
    assert "loss_plot" not in card and "Tokens seen" not in card
    assert not (repo / "training_summary.json").exists()


def test_push_again_replaces_atomically_and_keeps_earlier_versions(model_dir, trained_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    first_weights = (repo / "model.safetensors").read_bytes()
    push_to_local_hub(trained_dir, hub, "alice/tiny-gpt")
    assert (repo / "model.safetensors").read_bytes() == (trained_dir / "model.safetensors").read_bytes()
    assert (repo / "model.safetensors").read_bytes() != first_weights
    assert git(repo, "rev-list", "--count", "HEAD") == "2"
    first = subprocess.run(["git", "show", "HEAD~1:model.safetensors"], cwd=repo, capture_output=True, check=True)
    assert first.stdout == first_weights
    assert git(repo, "show", "--name-only", "--format=", "HEAD~1").count("training_summary.json") == 0

    # A push that fails half-way leaves the last good version in place and no staging folder behind.
    head, tree = git(repo, "rev-parse", "HEAD"), file_tree(repo)
    with monkeypatch.context() as patch:
        patch.setattr("use.push.model_card", lambda *args, **kwargs: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    assert git(repo, "rev-parse", "HEAD") == head and file_tree(repo) == tree
    assert sorted(p.name for p in (hub / "alice").iterdir()) == [".tiny-gpt.lock", "tiny-gpt"]


def test_a_push_links_the_history_and_recovers_from_a_killed_one(model_dir, trained_dir, tmp_path):
    hub = tmp_path / "hub"
    repo = push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    blob = git(repo, "rev-parse", "HEAD:model.safetensors")
    first_weights = repo / ".git" / "objects" / blob[:2] / blob[2:]
    inode = first_weights.stat().st_ino
    # A push killed between its two renames: the repository moved aside, the next version half-staged.
    (hub / "alice" / ".tiny-gpt.old-killed").mkdir()
    os.replace(repo, hub / "alice" / ".tiny-gpt.old-killed" / "tiny-gpt")
    (hub / "alice" / ".tiny-gpt.tmp-killed").mkdir()
    (hub / "alice" / ".tiny-gpt.tmp-killed" / "model.safetensors").write_bytes(b"half")

    push_to_local_hub(trained_dir, hub, "alice/tiny-gpt")
    assert sorted(p.name for p in (hub / "alice").iterdir()) == [".tiny-gpt.lock", "tiny-gpt"]
    assert git(repo, "rev-list", "--count", "HEAD") == "2"  # the history was put back, then pushed onto
    assert git(repo, "log", "--format=%s") == "Push trained (gptscratch)\nPush converted (gptscratch)"
    # The first version's weights are the same file, linked into the new repository rather than copied.
    assert first_weights.stat().st_ino == inode


@pytest.mark.slow
def test_pushed_repositories_load_without_the_project(model_dir, tokenizer, tmp_path, capsys):
    hub = tmp_path / "hub"
    repo = push_to_local_hub(model_dir, hub, "alice/tiny-gpt")
    # The plain GPT-2 one through the command: --format reaches the Python API.
    pushed = run_main(
        use.push.main,
        ["--model", model_dir, "--hub-dir", hub, "--repo-id", "alice/tiny-gpt2", "--format", "gpt2"],
        capsys,
    )
    gpt2_repo = hub / "alice" / "tiny-gpt2"
    assert pushed.returncode == 0 and f"pushed alice/tiny-gpt2 to {gpt2_repo}" in pushed.stdout, pushed.stderr
    code = f"""
import json, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline
repo, gpt2_repo, prompt = {str(repo)!r}, {str(gpt2_repo)!r}, {PROMPT!r}
config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
ids = tokenizer(prompt, return_tensors="pt").input_ids
generated = pipeline("text-generation", model=repo, trust_remote_code=True)(prompt, max_new_tokens=5, do_sample=False)
gpt2 = AutoModelForCausalLM.from_pretrained(gpt2_repo)  # no remote code
with torch.no_grad():
    logits, gpt2_logits = model(ids).logits, gpt2(ids).logits
print(json.dumps({{
    "config": type(config).__name__, "model": type(model).__name__, "gpt2": type(gpt2).__name__,
    "ids": ids[0].tolist(), "logits": logits[0, -1].tolist(), "gpt2_logits": gpt2_logits[0, -1].tolist(),
    "generated": generated[0]["generated_text"],
}}))
"""
    result = run_without_project(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (loaded["config"], loaded["model"], loaded["gpt2"]) == (
        "GPTScratchConfig",
        "GPTScratchForCausalLM",
        "GPT2LMHeadModel",
    )
    model, _ = load_model_directory(model_dir)
    ids = torch.tensor([loaded["ids"]])
    assert loaded["ids"] == tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits[0, -1]
    assert_same_logits(torch.tensor(loaded["logits"]), expected)
    assert_same_logits(torch.tensor(loaded["gpt2_logits"]), expected)
    assert loaded["generated"] == generate_text(model, PROMPT, 5, tokenizer=tokenizer)


# --- export as plain GPT-2 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_gpt2_export_gives_the_same_logits_without_remote_code(tokenizer, tmp_path, qkv_bias):
    model = tiny_model_for(tokenizer, qkv_bias=qkv_bias, layer_norm_eps=1e-3)
    source = save_model_directory(model, tokenizer, tmp_path / "model")
    output = export_gpt2(source, tmp_path / "gpt2")
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert config["layer_norm_epsilon"] == 1e-3
    assert not (output / "modeling_gptscratch.py").exists()
    with safe_open(output / "model.safetensors", "pt") as weights:
        assert weights.get_slice("transformer.h.0.attn.c_attn.weight").get_shape() == [32, 96]  # Conv1D: [in, out]
        assert weights.get_slice("transformer.h.1.mlp.c_fc.weight").get_shape() == [32, 128]
    gpt2 = GPT2LMHeadModel.from_pretrained(output).eval()
    ids = torch.randint(0, len(tokenizer), (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_same_logits(gpt2(ids).logits, model(ids).logits)
    assert load_tokenizer(output)(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]


@pytest.mark.parametrize("attention_dropout, attn_pdrop", [(None, 0.1), (0.0, 0.0), (0.2, 0.2)])
def test_gpt2_export_maps_the_attention_dropout_to_attn_pdrop(tokenizer, attention_dropout, attn_pdrop):
    model = tiny_model_for(tokenizer, drop_rate=0.1, attention_dropout=attention_dropout)
    config = to_gpt2(model).config
    assert (config.attn_pdrop, config.resid_pdrop, config.embd_pdrop) == (attn_pdrop, 0.1, 0.1)


def test_gpt2_export_command_writes_the_directory_and_shares_untransposed_weights(model_dir, tmp_path, capsys):
    output = tmp_path / "gpt2"
    result = run_main(convert.gpt2_export.main, ["--model", model_dir, "--output-dir", output], capsys)
    assert result.returncode == 0 and f"wrote GPT-2 directory {output}" in result.stdout, result.stderr
    model, _ = load_model_directory(model_dir)
    gpt2 = GPT2LMHeadModel.from_pretrained(output).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same_logits(gpt2(ids).logits, model(ids).logits)
    # Built on the meta device: the export holds the model's own embedding, not a random one it then overwrote.
    exported = to_gpt2(model)
    assert exported.transformer.wte.weight.data_ptr() == model.model.tok_emb.weight.data_ptr()
    assert exported.lm_head.weight is exported.transformer.wte.weight and not exported.training


def test_gpt2_export_refuses_an_untied_head_with_the_reason(tokenizer, tmp_path):
    model = tiny_model_for(tokenizer, tie_word_embeddings=False)
    with pytest.raises(InputError, match=r"GPT-2 cannot express.*tie_word_embeddings=false"):
        to_gpt2(model)
    source = save_model_directory(model, tokenizer, tmp_path / "model")
    with pytest.raises(InputError, match="GPT-2 cannot express"):
        export_gpt2(source, tmp_path / "gpt2")
    assert not (tmp_path / "gpt2").exists()


# --- bad input: exit status 2, one line naming the input and the fix, nothing written outside HUB --------------------


@pytest.mark.parametrize("repo_id", ["a/b/c", "a", "a/", "./b", "a/b..c", "a/-b", "a\\b/c"])
def test_repo_ids_that_are_not_two_plain_names_are_refused(repo_id, tmp_path):
    with pytest.raises(InputError, match="is not NAMESPACE/NAME"):
        repo_path(tmp_path, repo_id)


def test_bad_input_exits_2_with_one_line_and_writes_nothing(model_dir, tokenizer, tmp_path, capfd):
    """Each command, run in-process on its flags: exit status 2, one stderr line naming the input, nothing written."""
    foreign = export_gpt2(model_dir, tmp_path / "gpt2-dir")
    (tmp_path / "a-file").write_text("not a directory")
    hub = tmp_path / "hub"
    push = ["--model", model_dir, "--hub-dir", hub]
    cases = {
        "repo id ../x": (use.push.main, push + ["--repo-id", "../x"], "'../x' is not NAMESPACE/NAME"),
        "absolute repo id": (use.push.main, push + ["--repo-id", tmp_path / "x"], "is not NAMESPACE/NAME"),
        "empty part": (use.push.main, push + ["--repo-id", "alice//x"], "'alice//x' is not NAMESPACE/NAME"),
        "hub is a file": (use.push.main, push[:-1] + [tmp_path / "a-file", "--repo-id", "a/b"], "is not a directory"),
        "hub under a file": (
            use.push.main,
            push[:-1] + [tmp_path / "a-file" / "hub", "--repo-id", "a/b"],
            "is not a directory",
        ),
        "push missing model": (
            use.push.main,
            ["--model", tmp_path / "absent", "--hub-dir", hub, "--repo-id", "a/b"],
            "does not exist",
        ),
        "generate foreign model": (use.generate.main, ["--model", foreign, "--prompt", PROMPT], "holds a 'gpt2' model"),
        "empty prompt": (use.generate.main, ["--model", model_dir, "--prompt", ""], "encodes to no tokens"),
        # What Python makes of the bytes of a Latin-1 "café" on the command line.
        "prompt that is not UTF-8": (
            use.generate.main,
            ["--model", model_dir, "--prompt", "caf\udce9"],
            "the prompt 'caf\\udce9' is not valid text",
        ),
        "eval missing data": (
            use.evaluate.main,
            ["--model", model_dir, "--data", tmp_path / "absent"],
            "does not exist",
        ),
        "export taken output": (
            convert.gpt2_export.main,
            ["--model", model_dir, "--output-dir", tmp_path],
            "is not empty; pass --overwrite",
        ),
    }
    before = file_tree(tmp_path)
    for main, argv, message in cases.values():
        prog = {
            convert.gpt2_export.main: convert.gpt2_export.PROG,
            use.push.main: use.push.PROG,
            use.generate.main: use.generate.PROG,
            use.evaluate.main: use.evaluate.PROG,
        }[main]
        result = run_main(main, argv, capfd)
        assert_one_line_error(result, prog, message)
    assert file_tree(tmp_path) == before


def test_an_unwritable_hub_directory_is_refused(model_dir, tmp_path, monkeypatch, capfd):
    # os.access, not chmod: the tests may run as root, whom permissions do not stop.
    monkeypatch.setattr("use.push.os.access", lambda path, mode: False)
    argv = ["--model", model_dir, "--hub-dir", tmp_path / "hub", "--repo-id", "alice/tiny-gpt"]
    assert_one_line_error(
        run_main(use.push.main, argv, capfd),
        use.push.PROG,
        f"hub directory {tmp_path / 'hub'} is not writable",
        "choose a writable --hub-dir",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_refusals_after_reading_the_model_directory_print_one_line(model_dir, tokenizer, tmp_path):
    """The refusals that come after a model directory is read, run as the user runs them: a fresh interpreter,
    where any library's warning, log line or progress bar would reach stderr before the error."""
    untied = save_model_directory(tiny_model_for(tokenizer, tie_word_embeddings=False), tokenizer, tmp_path / "untied")
    chars = ascii_char_tokenizer()
    unknown_chars = save_model_directory(tiny_model_for(chars), chars, tmp_path / "ascii-model")
    (tmp_path / "a-file").write_text("some text")
    hub = str(tmp_path / "hub")
    cases = {
        "untied as gpt2": (
            ["-m", "use.push", "--model", str(untied), "--hub-dir", hub, "--repo-id", "a/b", "--format", "gpt2"],
            "gptscratch-push",
            "GPT-2 cannot express",
        ),
        "export untied": (
            ["-m", "convert.gpt2_export", "--model", str(untied), "--output-dir", str(tmp_path / "out")],
            "python -m convert.gpt2_export",
            "GPT-2 cannot express",
        ),
        "unknown characters": (
            ["-m", "use.generate", "--model", str(unknown_chars), "--prompt", "naïve"],
            "gptscratch-generate",
            "cannot represent 'ï'",
        ),
        "stride over context": (
            ["-m", "use.evaluate", "--model", str(model_dir), "--data", str(tmp_path / "a-file"), "--stride", "33"],
            "gptscratch-eval",
            "--stride must be between 1 and the context length 32",
        ),
    }
    before = file_tree(tmp_path)
    results = run_clis([command for command, _, _ in cases.values()])
    for (_, prog, message), result in zip(cases.values(), results):
        assert_one_line_error(result, prog, message)
    assert file_tree(tmp_path) == before


def test_eval_on_the_training_windows_equals_the_training_loops_validation_loss(tiny_model):
    """Issue 5's contract: on the same windows, gptscratch-eval's scoring is the loop's validation loss."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from train.loop import evaluate_loss
    from train.windows import TokenWindows

    context, windows = 16, 7
    ids = torch.randint(0, 97, (windows * context + 1,), generator=torch.Generator().manual_seed(9)).tolist()
    dataset = TokenWindows(np.array(ids, dtype=np.uint16), context, context)
    assert len(dataset) == windows
    loader = DataLoader(dataset, batch_size=3, shuffle=False, drop_last=False)  # an uneven last batch
    loop_loss = evaluate_loss(tiny_model, loader, Accelerator(cpu=True))
    nats, tokens = score_token_ids(tiny_model, ids, context_length=context, stride=context, batch_size=2)
    assert tokens == windows * context
    assert nats / tokens == pytest.approx(loop_loss, rel=1e-5)
