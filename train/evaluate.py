"""Evaluate a model on text: cross-entropy loss, perplexity and bits per byte over a sliding window.

Command line: `gptscratch-eval --model DIR --data FILE... [--context-length L] [--stride S] [--batch-size B] [--json]`;
Python: `evaluate_text(model, tokenizer, texts)`, built on `score_token_ids`.

Windows follow Hugging Face's perplexity guide (https://huggingface.co/docs/transformers/perplexity) with the book's
targets: a window holds up to L input tokens and predicts the L tokens after its first; windows start every S tokens
and each scores only the targets no earlier window scored. So every token is scored exactly once, and with S < L
it keeps at least L - S + 1 tokens of history (fewer only at the start of a text, where there are no more).

The command (and `evaluate_text`) scores every byte of each text: the text's token stream starts with an
`<|endoftext|>` so that its first token is predicted too (`text_token_ids`), and the last window may be shorter than
L, so the tail of the text counts. The training loop's validation windows are the book's (`GPTDatasetV1` with
stride = max_length): full windows only, the tail too short for one dropped. To get the training loop's validation
loss, call `score_token_ids(model, ids, context_length=L, stride=L)` on the loop's validation token IDs cut to whole
windows (`ids[: k * L + 1]`): it then scores exactly the loop's k non-overlapping windows, and nats / tokens is
their mean cross-entropy per token.

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

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.commands import ArgumentParser, UsageError, run_command
from common.files import read_utf8_file
from common.model_dir import inference_device, load_model_weights, read_model_directory

PROG = "gptscratch-eval"


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

    Every token but the first is scored once, over `sliding_windows(len(token_ids), context_length, stride)`,
    the last window shorter when the stream does not end on a window boundary. context_length defaults to the
    model's; stride to context_length. With stride = context_length = L and len(token_ids) = k * L + 1 these are
    exactly the training loop's k validation windows over the same IDs (see the module's docstring). Windows of
    equal length go through the model `batch_size` at a time, and only the scored positions' logits are computed
    (`logits_to_keep`).
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

    Each text is scored as `text_token_ids` gives it (after a leading `<|endoftext|>`), over sliding windows that
    include the last, shorter one (`score_token_ids`), so every token of the text is scored once.
    Returns {"loss": mean nats per token, "perplexity": exp(loss), "bits_per_byte": total nats / ln 2 / bytes,
    "tokens": tokens scored, "bytes": UTF-8 bytes of the texts}. Texts with no token to score are a UsageError.
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
        raise UsageError(
            "the texts hold no token to score (a text needs two tokens, counting the leading end-of-text token); "
            "pass longer text"
        )
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
    text = read_utf8_file(path, "data file", "pass a UTF-8 text file with text to evaluate on")
    if not text.strip():
        raise UsageError(f"data file {path} is empty; pass a file with text to evaluate on")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The flags of `gptscratch-eval`: the model directory, the text files and the sliding window."""
    parser = ArgumentParser(
        prog=PROG,
        description="Loss, perplexity and bits per byte of a model directory on text files (sliding window). Each "
        "file is scored on its own, after a leading <|endoftext|> so that its first token is scored too, and the "
        "last window may be shorter than the context, so every token of the text is scored once. (The training "
        "loop's validation loss scores only the full windows of its own token stream; "
        "train.evaluate.score_token_ids reproduces it.)",
    )
    parser.add_argument("--model", required=True, help="model directory (trained or converted)")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE", help="UTF-8 text files, each scored alone")
    parser.add_argument("--context-length", type=int, default=None, help="window length (default: the model's)")
    parser.add_argument(
        "--stride", type=int, default=None,
        help="tokens between window starts (default: the context length, non-overlapping windows as in training); "
        "smaller gives each token more history and costs context/stride times more",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts = [read_text_file(path) for path in args.data]
    config, tokenizer = read_model_directory(args.model)
    model_context = config.max_position_embeddings
    context_length = model_context if args.context_length is None else args.context_length
    if not 1 <= context_length <= model_context:
        raise UsageError(
            f"--context-length must be between 1 and the model's context {model_context}, got {context_length}"
        )
    stride = context_length if args.stride is None else args.stride
    if not 1 <= stride <= context_length:
        raise UsageError(f"--stride must be between 1 and the context length {context_length}, got {stride}")
    model = load_model_weights(args.model, config, device=inference_device())
    result = evaluate_text(model, tokenizer, texts, context_length, stride, args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"data           {len(texts)} file(s), {result['bytes']:,} bytes, {result['tokens']:,} tokens scored")
        print(f"windows        context {context_length}, stride {stride}")
        print(f"loss           {result['loss']:.4f} nats/token")
        print(f"perplexity     {result['perplexity']:.2f}")
        print(f"bits per byte  {result['bits_per_byte']:.4f}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `gptscratch-eval` (also `python -m train.evaluate`); `argv` defaults to the command line."""
    run_command(PROG, lambda: _main(argv))


if __name__ == "__main__":
    main()
