"""gptscratch-serve: transformers' own OpenAI-compatible server on a model directory, asked by OpenAI's own client.

Each server runs in a subprocess on 127.0.0.1 (a free port); its greedy answers must be gptscratch-generate's text.
The model is the tiny one with its own fitted BPE, made to choose only printable ASCII tokens (streamed text is decoded
a token at a time, so every token must decode on its own) and to vary its greedy text from token to token.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from conftest import PROMPT, REPO_ROOT, byte_level_bpe, tiny_model_for

from common.model_dir import save_model_directory
from convert.gpt2_export import export_gpt2
from use.generate import generate_text
from use.serve import server_arguments

HOST = "127.0.0.1"
NEW_TOKENS = 12
PROMPTS = [PROMPT, "You forward", "moves", "Every effort moves you forward. Every"]
CHAT = [{"role": "user", "content": "Hello"}]
# The plain template's rendering of CHAT, written out here as the documentation shows it.
PLAIN_CHAT_PROMPT = "User: Hello\n\nAssistant:"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """The native model directory, its plain GPT-2 export, and that export as written before directories carried a
    chat template."""
    root = tmp_path_factory.mktemp("serve")
    tokenizer = byte_level_bpe("Every effort moves you forward. " * 120 + "\n", vocab_size=300)
    model = tiny_model_for(tokenizer, seed=0, context_length=64)
    printable = [tokenizer.decode([i]).isascii() and tokenizer.decode([i]).isprintable() for i in range(len(tokenizer))]
    with torch.no_grad():
        # Other tokens' logits are 0 (their embedding, tied to the head, is), below the printable ones' largest; larger
        # position embeddings make the greedy choice change along the text instead of repeating the last token.
        model.model.tok_emb.weight[~torch.tensor(printable)] = 0
        model.model.pos_emb.weight.mul_(10)
    native = save_model_directory(model, tokenizer, root / "model")
    export = export_gpt2(native, root / "gpt2")
    old = shutil.copytree(export, root / "gpt2-old")
    (old / "chat_template.jinja").unlink()
    return {"native": native, "export": export, "old": old}


def expected(model_dir: Path, prompt: str) -> str:
    """What gptscratch-generate continues `prompt` with, greedy: the text after the prompt."""
    text = generate_text(model_dir, prompt, max_new_tokens=NEW_TOKENS, temperature=0)
    assert text.startswith(prompt)
    return text[len(prompt) :]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server(model_dir: Path, *options: str, log: Path) -> Iterator[openai.OpenAI]:
    """`gptscratch-serve MODEL_DIR OPTIONS` running in a subprocess, and an OpenAI client of it."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "use.serve", str(model_dir), *options, "--host", HOST, "--port", str(port)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"gptscratch-serve exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"gptscratch-serve did not answer in 120 s:\n{log.read_text()}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            time.sleep(0.25)
        yield openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def complete(client: openai.OpenAI, model_dir: Path, prompt: str) -> str:
    answer = client.completions.create(model=str(model_dir), prompt=prompt, max_tokens=NEW_TOKENS, temperature=0)
    return answer.choices[0].text


def chat(client: openai.OpenAI, model_dir: Path) -> str:
    answer = client.chat.completions.create(model=str(model_dir), messages=CHAT, max_tokens=NEW_TOKENS, temperature=0)
    return answer.choices[0].message.content


@pytest.mark.slow
def test_a_native_directory_answers_as_gptscratch_generate_plain_streamed_concurrent_and_in_chat(dirs, tmp_path):
    native = dirs["native"]
    wanted = {prompt: expected(native, prompt) for prompt in PROMPTS}
    assert len(set(wanted.values())) == len(PROMPTS)  # the prompts lead to different text
    with server(native, log=tmp_path / "server.log") as client:
        assert complete(client, native, PROMPT) == wanted[PROMPT]

        stream = client.completions.create(
            model=str(native), prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True
        )
        pieces = [chunk.choices[0].text for chunk in stream]
        assert len(pieces) > NEW_TOKENS // 2  # streamed as generated, not in one piece
        assert "".join(pieces) == wanted[PROMPT]

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers = list(pool.map(lambda prompt: complete(client, native, prompt), PROMPTS))
        assert answers == [wanted[prompt] for prompt in PROMPTS]

        assert chat(client, native) == expected(native, PLAIN_CHAT_PROMPT)


@pytest.mark.slow
def test_a_gpt2_export_written_before_chat_templates_serves_with_the_plain_one(dirs, tmp_path):
    old = dirs["old"]
    with server(old, log=tmp_path / "server.log") as client:
        assert complete(client, old, PROMPT) == expected(dirs["native"], PROMPT)
        assert chat(client, old) == expected(dirs["native"], PLAIN_CHAT_PROMPT)


@pytest.mark.slow
def test_a_chat_template_file_replaces_the_directorys(dirs, tmp_path):
    template = tmp_path / "last-message.jinja"
    template.write_text("{{ messages[-1]['content'] }} and", encoding="utf-8")
    native = dirs["native"]
    with server(native, "--chat-template", str(template), log=tmp_path / "server.log") as client:
        assert chat(client, native) == expected(native, "Hello and")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["native", "export"])
def test_continuous_batching_answers_as_gptscratch_generate(dirs, kind, tmp_path):
    model_dir = dirs[kind]
    # A small paged cache: sized by default for the memory of a GPU, its first request takes half a minute on a CPU.
    options = [
        "--continuous-batching",
        "--cb-num-blocks",
        "16",
        "--cb-block-size",
        "16",
        "--cb-max-batch-tokens",
        "128",
    ]
    with server(model_dir, *options, log=tmp_path / "server.log") as client:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda prompt: complete(client, model_dir, prompt), PROMPTS[:2]))
    assert answers == [expected(dirs["native"], prompt) for prompt in PROMPTS[:2]]


def test_every_directory_written_carries_a_chat_template_and_an_old_one_gets_the_plain_one(dirs):
    from transformers import AutoTokenizer

    for name in ("native", "export"):
        tokenizer = AutoTokenizer.from_pretrained(dirs[name])
        assert tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == PLAIN_CHAT_PROMPT
    assert server_arguments(dirs["native"], ["--port", "1"]) == [str(dirs["native"]), "--port", "1"]

    arguments = server_arguments(dirs["old"], ["--port", "1"], chat_template_kwargs='{"enable_thinking": false}')
    assert arguments[:3] == [str(dirs["old"]), "--port", "1"] and arguments[3] == "--chat-template-kwargs"
    kwargs = json.loads(arguments[4])
    assert kwargs.pop("enable_thinking") is False  # the user's own keyword arguments go on with the template
    tokenizer = AutoTokenizer.from_pretrained(dirs["old"])
    assert tokenizer.chat_template is None
    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False, **kwargs)
    assert rendered == PLAIN_CHAT_PROMPT
