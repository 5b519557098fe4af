"""Generate text from a model directory (trained or converted) with the book's decoding, streamed as it is produced.

Command line: `gptscratch-generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K]
[--seed S] [--no-stop-at-eos]`; Python: `generate_text(...)`. Both load a directory the same way
(`load_for_generation`, on the GPU when there is one) and run the same loop, so the same arguments give the same
text, and the command prints what the function returns.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase, TextStreamer
from transformers.generation.streamers import BaseStreamer

from common.commands import ArgumentParser, run_command
from common.errors import InputError, field
from common.model_dir import inference_device, load_model_weights, read_model_directory
from modeling_gptscratch import GPTScratchForCausalLM, decoding_args_problem
from train.checks import new_tokens

PROG = "gptscratch-generate"


def check_decoding_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """The model's own check of the decoding settings (`decoding_args_problem`), as an InputError naming the field,
    so a command refuses before loading; and at most MAX_NEW_TOKENS new tokens (the model itself, like
    transformers, sets no bound)."""
    problem = decoding_args_problem(max_new_tokens, temperature, top_k)
    if problem is not None:
        name, requirement = problem
        raise InputError(f"{field(name)} {requirement}")
    new_tokens("max_new_tokens", max_new_tokens)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, vocab_size: int) -> list[int]:
    """The prompt's token IDs, or an InputError when the tokenizer cannot represent the prompt.

    Refused: text that is not valid Unicode (lone surrogates: Python's stand-ins for command-line bytes that are not
    UTF-8), a prompt that encodes to no tokens, characters the tokenizer maps to its unknown token (a byte-level
    BPE such as GPT-2's has none; a character vocabulary does), and IDs beyond the model's embedding table (a
    tokenizer that does not belong to the model). `<|endoftext|>` in the prompt is the special token, as in the book.
    """
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"the prompt {prompt!r} is not valid text: {prompt[error.start]!r} at position {error.start} stands for "
            "a byte that is not UTF-8; pass the prompt as UTF-8 text"
        ) from None
    encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids: list[int] = encoding["input_ids"]
    if not ids:
        raise InputError(f"the prompt {prompt!r} encodes to no tokens; pass a prompt with some text to continue")
    unk_id = tokenizer.unk_token_id
    if unk_id is not None:
        # GPT-2 names <|endoftext|> as its unknown token too, so an unknown ID only counts when the text under it is
        # not that token's own spelling.
        offsets = encoding.get("offset_mapping") or [None] * len(ids)
        unknown = [
            prompt[span[0] : span[1]] if span else "?"
            for token_id, span in zip(ids, offsets)
            if token_id == unk_id and (span is None or prompt[span[0] : span[1]] != tokenizer.unk_token)
        ]
        if unknown:
            raise InputError(
                f"the tokenizer cannot represent {', '.join(map(repr, unknown))} in the prompt (it becomes "
                f"{tokenizer.unk_token}); remove those characters or use a model whose tokenizer covers them"
            )
    if max(ids) >= vocab_size:
        raise InputError(
            f"the prompt encodes to token ID {max(ids)} but the model has {vocab_size} embeddings; "
            "the model directory's tokenizer does not belong to its model, save the matching one beside it"
        )
    return ids


def end_of_text_ids(model: GPTScratchForCausalLM, tokenizer: PreTrainedTokenizerBase, stop_at_eos: bool) -> list[int]:
    """The IDs that end generation: none without `stop_at_eos` (decode to the length limit), else the generation
    config's end-of-text IDs, else the tokenizer's, else none."""
    if not stop_at_eos:
        return []
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


class EndOfTextStreamer(TextStreamer):
    """transformers' TextStreamer (prints words as they form) that shows special tokens as written, so an
    `<|endoftext|>` typed in the prompt is printed, and leaves out only the end-of-text token that ends generation.

    `model.generate` stops right after emitting one of `eos_token_ids`, so a new token (any put after the prompt's)
    that is one of them is the last and is dropped, as `generate_text` drops it from the text it returns.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: Sequence[int]):
        super().__init__(tokenizer, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        self.eos_token_ids = set(eos_token_ids)

    def put(self, value: torch.Tensor) -> None:
        # TextStreamer only tracks the prompt with skip_prompt; end() sets next_tokens_are_prompt back to True.
        is_prompt, self.next_tokens_are_prompt = self.next_tokens_are_prompt, False
        if not is_prompt and value.numel() == 1 and int(value) in self.eos_token_ids:
            return
        super().put(value)


def load_for_generation(
    model_dir: str | os.PathLike, prompt: str
) -> tuple[GPTScratchForCausalLM, PreTrainedTokenizerBase]:
    """A model directory's model, on `inference_device()`, and its tokenizer, for continuing `prompt`.

    The prompt is checked against the tokenizer (`encode_prompt`) before the weights load, so a prompt it cannot
    represent is refused at once. The command and `generate_text` both load this way, so they agree on the device
    and, for a seed, on the text.
    """
    config, tokenizer = read_model_directory(model_dir)
    encode_prompt(tokenizer, prompt, config.vocab_size)
    return load_model_weights(model_dir, config, device=inference_device()), tokenizer


def generate_text(
    model_dir_or_model: str | os.PathLike | GPTScratchForCausalLM,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
    streamer: BaseStreamer | None = None,
) -> str:
    """The prompt followed by up to `max_new_tokens` generated tokens, as text.

    model_dir_or_model: a model directory, loaded with its own tokenizer by `load_for_generation` (on the GPU when
    there is one; passing `tokenizer` too is an InputError, since it would be ignored), or a loaded model, which
    needs `tokenizer` and is used where it is. temperature 0 is greedy; above 0 samples from
    softmax(logits / temperature), from the `top_k` highest logits when set. `seed` makes sampling reproducible.
    With `stop_at_eos` generation ends at the end-of-text token, which is left out of the text; without,
    `<|endoftext|>` appears where the model emits it and decoding goes on. An `<|endoftext|>` in the prompt stays.
    `streamer` (e.g. `EndOfTextStreamer`) is passed to `model.generate`: it receives the prompt IDs [1, tokens],
    then each new ID [1] as it is chosen, then `end()`. Bad arguments or a prompt the tokenizer cannot represent
    raise `InputError`, before a model directory is loaded.
    """
    check_decoding_args(max_new_tokens, temperature, top_k)
    if isinstance(model_dir_or_model, (str, os.PathLike)):
        if tokenizer is not None:
            raise InputError(
                "generate_text got a model directory and a tokenizer; a directory is used with its own tokenizer, "
                "so leave tokenizer out (or pass a loaded model with it)"
            )
        model, tokenizer = load_for_generation(model_dir_or_model, prompt)
    elif tokenizer is None:
        raise InputError("generate_text got a model object without a tokenizer; pass tokenizer=...")
    else:
        model = model_dir_or_model
    prompt_ids = encode_prompt(tokenizer, prompt, model.config.vocab_size)
    eos_ids = end_of_text_ids(model, tokenizer, stop_at_eos)
    generator = None if seed is None else torch.Generator(device=model.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            torch.tensor([prompt_ids], device=model.device),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_token_id=eos_ids,
            generator=generator,
            streamer=streamer,
        )
    finally:
        model.train(was_training)
    new_ids = output[0, len(prompt_ids) :].tolist()
    if new_ids and new_ids[-1] in eos_ids:
        new_ids.pop()  # the end-of-text token ends the text; it is not part of it
    return tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-generate`: the model directory, the prompt and the book's decoding settings."""
    parser = ArgumentParser(
        prog=PROG, description="Continue a prompt with a model directory, printing the text as it is generated."
    )
    parser.add_argument("--model", required=True, help="model directory (trained or converted)")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="most tokens to generate (default 50)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default); above 0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument(
        "--no-stop-at-eos",
        dest="stop_at_eos",
        action="store_false",
        help="keep generating past the end-of-text token (printed as <|endoftext|>)",
    )
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    check_decoding_args(args.max_new_tokens, args.temperature, args.top_k)
    model, tokenizer = load_for_generation(args.model, args.prompt)
    streamer = EndOfTextStreamer(tokenizer, end_of_text_ids(model, tokenizer, args.stop_at_eos))
    generate_text(
        model,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.seed,
        stop_at_eos=args.stop_at_eos,
        tokenizer=tokenizer,
        streamer=streamer,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-generate` (also `python -m use.generate`); `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
