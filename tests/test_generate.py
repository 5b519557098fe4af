"""use.generate: gptscratch-generate and generate_text, streamed as generated, stopping at the end of text, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run_main
from conftest import PROMPT, ascii_char_tokenizer
from transformers import TextStreamer

import use.generate
from common.errors import InputError
from common.model_dir import inference_device, load_model_directory, save_model_directory
from use.generate import EndOfTextStreamer, encode_prompt, generate_text


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
