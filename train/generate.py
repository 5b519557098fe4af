"""Generate text from a model directory (trained or converted) with the book's decoding, streamed as it is produced.

Command line: `gptscratch-generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K]
[--seed S] [--no-stop-at-eos]`; Python: `generate_text(...)`. Both run the same loop, so the same arguments give
the same text.
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import PreTrainedTokenizerBase, TextStreamer
from transformers.generation.streamers import BaseStreamer

from convert.commands import ArgumentParser, UsageError, run_command
from convert.model_dir import load_model_directory
from modeling_gptscratch import GPTScratchForCausalLM


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, vocab_size: int) -> list[int]:
    """The prompt's token IDs, or a UsageError when the tokenizer cannot represent the prompt.

    Refused: a prompt that encodes to no tokens, characters the tokenizer maps to its unknown token (a byte-level
    BPE such as GPT-2's has none; a character vocabulary does), and IDs beyond the model's embedding table (a
    tokenizer that does not belong to the model). `<|endoftext|>` in the prompt is the special token, as in the book.
    """
    encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids: list[int] = encoding["input_ids"]
    if not ids:
        raise UsageError(f"the prompt {prompt!r} encodes to no tokens; pass --prompt with some text to continue")
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
            raise UsageError(
                f"the tokenizer cannot represent {', '.join(map(repr, unknown))} in the prompt (it becomes "
                f"{tokenizer.unk_token}); remove those characters or use a model whose tokenizer covers them"
            )
    if max(ids) >= vocab_size:
        raise UsageError(
            f"the prompt encodes to token ID {max(ids)} but the model has {vocab_size} embeddings; "
            "the model directory's tokenizer does not belong to its model, save the matching one beside it"
        )
    return ids


def _eos_token_ids(model: GPTScratchForCausalLM, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The end-of-text IDs: the generation config's, else the tokenizer's, else none (decode to the length limit)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


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

    model_dir_or_model: a model directory (its tokenizer is loaded from it) or a loaded model with `tokenizer`.
    temperature 0 is greedy; above 0 samples from softmax(logits / temperature), from the `top_k` highest logits
    when set. `seed` makes sampling reproducible. With `stop_at_eos` generation ends at the end-of-text token, which
    is left out of the text; without, `<|endoftext|>` appears where the model emits it and decoding goes on.
    `streamer` (e.g. transformers' `TextStreamer`) is passed to `model.generate`: it receives the prompt IDs, then
    each new ID as it is chosen, then `end()`. Bad arguments or a prompt the tokenizer cannot represent raise
    `UsageError`.
    """
    if max_new_tokens < 0:
        raise UsageError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0 (0 is greedy decoding), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be >= 1 (or unset to keep every token), got {top_k}")
    if isinstance(model_dir_or_model, (str, os.PathLike)):
        model, tokenizer = load_model_directory(model_dir_or_model)
    elif tokenizer is None:
        raise UsageError("generate_text got a model object without a tokenizer; pass tokenizer=...")
    else:
        model = model_dir_or_model
    was_training = model.training
    model.eval()
    try:
        prompt_ids = encode_prompt(tokenizer, prompt, model.config.vocab_size)
        eos_ids = _eos_token_ids(model, tokenizer) if stop_at_eos else []
        generator = None if seed is None else torch.Generator(device=model.device).manual_seed(seed)
        output = model.generate(
            torch.tensor([prompt_ids], device=model.device), max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, eos_token_id=eos_ids, generator=generator, streamer=streamer,
        )
    finally:
        model.train(was_training)
    new_ids = output[0, len(prompt_ids):].tolist()
    if new_ids and new_ids[-1] in eos_ids:
        new_ids.pop()  # the end-of-text token ends the text; it is not part of it
    return tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="gptscratch-generate",
        description="Continue a prompt with a model directory, printing the text as it is generated.",
    )
    parser.add_argument("--model", required=True, help="model directory (trained or converted)")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="most tokens to generate (default 50)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default); above 0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument(
        "--no-stop-at-eos", dest="stop_at_eos", action="store_false",
        help="keep generating past the end-of-text token (printed as <|endoftext|>)",
    )
    return parser


def _main() -> None:
    args = build_parser().parse_args()
    model, tokenizer = load_model_directory(args.model)
    if torch.cuda.is_available():
        model.to("cuda")
    # With --no-stop-at-eos, <|endoftext|> is shown where the model emits it; otherwise the final one is not text.
    streamer = TextStreamer(tokenizer, skip_special_tokens=args.stop_at_eos, clean_up_tokenization_spaces=False)
    generate_text(
        model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed,
        stop_at_eos=args.stop_at_eos, tokenizer=tokenizer, streamer=streamer,
    )


def main() -> None:
    """Console entry point of `gptscratch-generate`."""
    run_command("gptscratch-generate", _main)


if __name__ == "__main__":
    main()
