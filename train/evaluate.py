"""Evaluate a model on text: cross-entropy loss, perplexity and bits per byte over a sliding window.

Command line: `gptscratch-eval --model DIR --data FILE... [--context-length L] [--stride S] [--batch-size B] [--json]`;
Python: `evaluate_text(model, tokenizer, texts)`, built on `score_token_ids`.

Windows follow Hugging Face's perplexity guide (https://huggingface.co/docs/transformers/perplexity) with the book's
targets: a window holds up to L input tokens and predicts the L tokens after its first; windows start every S tokens
and each scores only the targets no earlier window scored. So every token is scored exactly once, and with S < L
it keeps at least L - S + 1 tokens of history (fewer only at the start of a text, where there are no more). With
S = L the windows are the book's non-overlapping ones (`GPTDatasetV1` with stride = max_length), so the loss equals
the book's `calc_loss_loader` over them, which is what the training loop reports as validation loss.

Bits per byte divide the total surprisal by the text's UTF-8 size instead of its token count, so models with
different tokenizers compare: bits_per_byte = sum of -ln p(token) / ln 2 / bytes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from convert.commands import ArgumentParser, UsageError, run_command
from convert.model_dir import load_model_directory


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token stream scored for `text`: the end-of-text token, then the text's tokens.

    The leading end-of-text token (the document separator the model saw in training) gives the text's first token
    something to be predicted from, so every token, and every byte, of the text is scored. A tokenizer without one
    leaves the first token as context only.
    """
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []) + ids


def sliding_windows(tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over a stream of `tokens` IDs, as (start, end, scored): input IDs [start, end) predict the IDs
    [start + 1, end + 1), of which the last `scored` are scored (the earlier ones were scored by previous windows)."""
    windows = []
    start, scored_until = 0, 0  # targets at positions 1..scored_until are already scored
    while scored_until < tokens - 1:
        end = min(start + context_length, tokens - 1)
        windows.append((start, end, end - scored_until))
        scored_until = end
        start += stride
    return windows


@torch.no_grad()
def score_token_ids(
    model: PreTrainedModel,
    token_ids: Sequence[int] | torch.Tensor,
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> tuple[float, int]:
    """Total negative log-likelihood in nats of a token stream [tokens] and the number of tokens scored.

    Every token but the first is scored once, over `sliding_windows(len(token_ids), context_length, stride)`.
    context_length defaults to the model's; stride to context_length. Windows of equal length go through the
    model `batch_size` at a time, and only the scored positions' logits are computed (`logits_to_keep`).
    """
    if context_length is None:
        context_length = model.config.max_position_embeddings
    if stride is None:
        stride = context_length
    if not 1 <= stride <= context_length <= model.config.max_position_embeddings:
        raise ValueError(
            f"need 1 <= stride ({stride}) <= context_length ({context_length}) <= the model's context "
            f"({model.config.max_position_embeddings})"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    windows = sliding_windows(len(ids), context_length, stride)
    # Only a stream's last window can be shorter; batches never mix lengths, so no padding is needed.
    batches: list[list[tuple[int, int, int]]] = []
    for _, same_length in itertools.groupby(windows, key=lambda window: window[1] - window[0]):
        group = list(same_length)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    total_nats, total_tokens = 0.0, 0
    for batch in tqdm(batches, desc="evaluating", unit="batch", disable=None if len(batches) > 1 else True):
        inputs = torch.stack([ids[start:end] for start, end, _ in batch]).to(model.device)  # [batch, window]
        targets = torch.stack([ids[start + 1 : end + 1] for start, end, _ in batch]).to(model.device)
        keep = max(scored for _, _, scored in batch)
        # logits: [batch, keep, vocab], the predictions for the last `keep` targets of each window
        logits = model(inputs, use_cache=False, logits_to_keep=keep).logits
        targets = targets[:, -keep:].clone()
        for row, (_, _, scored) in enumerate(batch):
            targets[row, : keep - scored] = -100  # already scored by an earlier window
        total_nats += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        total_tokens += sum(scored for _, _, scored in batch)
    return total_nats, total_tokens


def evaluate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> dict[str, float | int]:
    """Loss, perplexity and bits per byte of `model` over `texts`, each text scored on its own.

    Returns {"loss": mean nats per token, "perplexity": exp(loss), "bits_per_byte": total nats / ln 2 / bytes,
    "tokens": tokens scored, "bytes": UTF-8 bytes of the texts}. See `score_token_ids` for the windows.
    """
    was_training = model.training
    model.eval()
    try:
        total_nats, total_tokens, total_bytes = 0.0, 0, 0
        for text in texts:
            nats, tokens = score_token_ids(
                model, text_token_ids(tokenizer, text), context_length, stride, batch_size
            )
            total_nats += nats
            total_tokens += tokens
            total_bytes += len(text.encode("utf-8"))
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("the texts hold no token to score; pass non-empty text")
    loss = total_nats / total_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / math.log(2) / total_bytes,
        "tokens": total_tokens,
        "bytes": total_bytes,
    }


def read_text_file(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents, or a UsageError that names the file and what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"data file {path} does not exist; pass an existing UTF-8 text file") from None
    except IsADirectoryError:
        raise UsageError(f"data file {path} is a directory; pass the text files inside it") from None
    except OSError as error:
        raise UsageError(f"cannot read data file {path}: {error.strerror}") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"data file {path} is not UTF-8 text (byte offset {error.start}); pass a UTF-8 text file"
        ) from None
    if not text.strip():
        raise UsageError(f"data file {path} is empty; pass a file with text to evaluate on")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="gptscratch-eval",
        description="Loss, perplexity and bits per byte of a model directory on text files (sliding window).",
    )
    parser.add_argument("--model", required=True, help="model directory (trained or converted)")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE", help="UTF-8 text files, each scored alone")
    parser.add_argument("--context-length", type=int, default=None, help="window length (default: the model's)")
    parser.add_argument(
        "--stride", type=int, default=None,
        help="tokens between window starts (default: the context length, the training loop's validation windows); "
        "smaller gives each token more history and costs context/stride times more",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _main() -> None:
    args = build_parser().parse_args()
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts = [read_text_file(path) for path in args.data]
    model, tokenizer = load_model_directory(args.model)
    model_context = model.config.max_position_embeddings
    context_length = model_context if args.context_length is None else args.context_length
    if not 1 <= context_length <= model_context:
        raise UsageError(
            f"--context-length must be between 1 and the model's context {model_context}, got {context_length}"
        )
    stride = context_length if args.stride is None else args.stride
    if not 1 <= stride <= context_length:
        raise UsageError(f"--stride must be between 1 and the context length {context_length}, got {stride}")
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_text(model, tokenizer, texts, context_length, stride, args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"data           {len(texts)} file(s), {result['bytes']:,} bytes, {result['tokens']:,} tokens scored")
        print(f"windows        context {context_length}, stride {stride}")
        print(f"loss           {result['loss']:.4f} nats/token")
        print(f"perplexity     {result['perplexity']:.2f}")
        print(f"bits per byte  {result['bits_per_byte']:.4f}")


def main() -> None:
    """Console entry point of `gptscratch-eval`."""
    run_command("gptscratch-eval", _main)


if __name__ == "__main__":
    main()
