"""Serve a model directory through transformers' own OpenAI-compatible server (`transformers serve`).

Command line: `gptscratch-serve DIR [--chat-template FILE] [transformers serve's options: --host, --port,
--continuous-batching, --device, --dtype, ...]`; Python: `serve(...)`. DIR is a gptscratch model directory (trained,
converted or pushed) or its plain GPT-2 export. The launcher checks the directory and the chat template, makes the
model's class one the server can load, and hands every other option to `transformers serve` unchanged:
`/v1/completions`, `/v1/chat/completions` and `/v1/responses` then answer on `http://HOST:PORT`.

A chat is rendered by the chat template: `--chat-template FILE`, else the directory's own (`chat_template.jinja`,
which every directory gptscratch writes carries), else `common.model_dir.PLAIN_CHAT_TEMPLATE` (for directories
written before there was one). It reaches the server through its public `--chat-template-kwargs`, so the directory
is served as it is, never rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.commands import ArgumentParser, run_command
from common.errors import InputError, field, first_line
from common.files import parse_json_object, read_json_object, read_utf8_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROG = "gptscratch-serve"
SERVING = "GPTSCRATCH_SERVING"  # set in the environment of a server `serve` starts (see `make_servable`)
# A conversation every chat template must render: what a chat request's messages become.
_SAMPLE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


def read_chat_template(path: str | os.PathLike) -> str:
    """The text of the chat template file `path` (a Jinja template, as a directory's chat_template.jinja holds);
    an InputError naming it when it is missing, a directory, or not UTF-8. Standard library only."""
    fix = "pass a Jinja chat template file, such as a model directory's chat_template.jinja"
    text = read_utf8_file(path, f"{field('chat_template')}", fix)
    if not text.strip():
        raise InputError(f"{field('chat_template')} {path} is empty; {fix}")
    return text


def check_chat_template(tokenizer: PreTrainedTokenizerBase, template: str, source: str) -> None:
    """An InputError naming `source` when `template` cannot render a short conversation with `tokenizer` (a Jinja
    syntax error, an unknown filter, a field it expects that a chat request does not have)."""
    from jinja2 import TemplateError

    try:
        tokenizer.apply_chat_template(_SAMPLE_CHAT, chat_template=template, add_generation_prompt=True, tokenize=False)
    except (TemplateError, TypeError, KeyError, ValueError) as error:
        raise InputError(
            f"{source} is not a chat template that renders a conversation ({type(error).__name__}: "
            f"{first_line(error)}); fix the template, or leave it out for the plain one"
        ) from None


def read_servable_directory(model_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a directory `serve` can serve (a gptscratch model directory or its plain GPT-2 export),
    checked as far as can be without loading the weights; an InputError naming the problem otherwise."""
    from common.model_dir import check_weights_match_config, load_tokenizer_or_refuse, read_model_directory

    directory = Path(model_dir)
    try:
        model_type = read_json_object(directory / "config.json", "model config", "").get("model_type")
    except InputError:
        model_type = None  # read_model_directory names what is wrong
    if model_type == "gpt2":
        fix = "export the model again, or save its tokenizer beside it with tokenizer.save_pretrained"
        return load_tokenizer_or_refuse(directory, f"{directory} holds no loadable tokenizer", fix)
    config, tokenizer = read_model_directory(directory)  # refuses anything else, naming it
    check_weights_match_config(directory, config)
    return tokenizer


def server_arguments(
    model_dir: str | os.PathLike,
    options: Sequence[str] = (),
    chat_template: str | os.PathLike | None = None,
    chat_template_kwargs: str | None = None,
) -> list[str]:
    """`transformers serve`'s arguments for serving `model_dir`: the directory, `options` (its own flags, passed on
    as they are), and `--chat-template-kwargs` carrying the chat template when the directory needs one.

    chat_template: a Jinja file whose template replaces the directory's. chat_template_kwargs: the server's option
    of that name (a JSON object for apply_chat_template), to which the template is added. Everything is checked
    here, so a bad directory or template is refused before the server starts.
    """
    template = None if chat_template is None else read_chat_template(chat_template)
    extra: dict[str, Any] = {}
    if chat_template_kwargs is not None:
        extra = parse_json_object(
            chat_template_kwargs, f"{field('chat_template_kwargs')} {chat_template_kwargs}", "pass a JSON object"
        )
    tokenizer = read_servable_directory(model_dir)
    if template is not None:
        check_chat_template(tokenizer, template, f"{field('chat_template')} {chat_template}")
        extra["chat_template"] = template
    elif tokenizer.chat_template is None:
        from common.model_dir import PLAIN_CHAT_TEMPLATE

        extra.setdefault("chat_template", PLAIN_CHAT_TEMPLATE)
    arguments = [str(model_dir), *options]
    if extra:
        arguments += ["--chat-template-kwargs", json.dumps(extra)]
    return arguments


def serve(
    model_dir: str | os.PathLike,
    options: Sequence[str] = (),
    chat_template: str | os.PathLike | None = None,
    chat_template_kwargs: str | None = None,
) -> None:
    """Runs `transformers serve` on `model_dir` until it is stopped (Ctrl-C), after `server_arguments` checked it.

    A gptscratch directory is served with this package's `GPTScratchForCausalLM`, the class gptscratch-generate
    runs, so the server's greedy completions are gptscratch-generate's text (the directory's copy of the model file
    is not run, unless the server is told to trust remote code). An
    option the server does not know, or a bad value for one, is an InputError with its parser's message.
    """
    import click
    from transformers.cli.transformers import app

    arguments = server_arguments(model_dir, options, chat_template, chat_template_kwargs)
    make_servable()
    os.environ[SERVING] = "1"
    try:
        app.main(["serve", *arguments], prog_name="transformers", standalone_mode=False)
    except click.ClickException as error:
        reason = error.format_message().splitlines()[0].rstrip(".")  # click lists the options after it
        raise InputError(f"transformers serve: {reason}; see transformers serve --help for its options") from None


def make_servable() -> None:
    """Registers GPTScratchForCausalLM where `transformers serve` looks model classes up (common.compat)."""
    from common.compat import register_for_transformers_serve
    from modeling_gptscratch import GPTScratchForCausalLM

    register_for_transformers_serve(GPTScratchForCausalLM)


# transformers serve (5.25 on) loads the model in a process it spawns, which runs the launcher's main module again,
# importing this one, and nothing else of the launcher: `serve` marks the environment that process inherits, so the
# class is registered there too.
if os.environ.get(SERVING):
    make_servable()


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-serve`: the model directory and the chat template; the rest are transformers
    serve's."""
    parser = ArgumentParser(
        prog=PROG,
        description="Serve a model directory through transformers' OpenAI-compatible server (transformers serve).",
        epilog="Every other option is transformers serve's, passed on unchanged (see transformers serve --help): "
        "--host (default localhost), --port (default 8000), --continuous-batching, --device, --dtype, ...",
        allow_abbrev=False,  # a prefix of one of transformers serve's options must reach it as typed
    )
    parser.add_argument(
        "model_dir", metavar="DIR", help="model directory (trained, converted or pushed), or its plain GPT-2 export"
    )
    parser.add_argument(
        "--chat-template",
        metavar="FILE",
        help="Jinja chat template to render chats with (default: the directory's own, else plain text with roles)",
    )
    parser.add_argument(
        "--chat-template-kwargs",
        metavar="JSON",
        help="transformers serve's default keyword arguments for apply_chat_template (a JSON object)",
    )
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args, options = build_parser().parse_known_args(argv)
    serve(args.model_dir, options, args.chat_template, args.chat_template_kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-serve` (also `python -m use.serve`); `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
