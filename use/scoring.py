"""Loss, perplexity and bits per byte of a model on text, scored over sliding windows.

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

At scale: files are read in pieces and their windows scored as their tokens arrive (`evaluate_files`,
`score_token_stream`), and the loss never holds a batch's [batch, tokens, vocab] logits (`train.loss.token_losses`),
so memory is bounded by the batch whatever the size of the files.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common.errors import InputError
from train.corpus import NotTextError, read_text_pieces
from train.loss import token_losses
from train.tokenizing import safe_pieces


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token stream scored for `text`: the end-of-text token, then the text's tokens.

    The leading end-of-text token (the document separator the model saw in training) gives the text's first token
    something to be predicted from, so every token, and every byte, of the text is scored. A tokenizer without one
    leaves the first token as context only.
    """
    return [token for chunk in text_token_chunks(tokenizer, [text]) for token in chunk]


def text_token_chunks(tokenizer: PreTrainedTokenizerBase, pieces: Iterable[str]) -> Iterator[list[int]]:
    """`text_token_ids` of the text made of `pieces`, a chunk at a time: each piece is tokenised in parts cut at
    safe places (`train.tokenizing.safe_pieces`), which give GPT-2-style byte-level BPEs the tokens of the whole."""
    if tokenizer.eos_token_id is not None:
        yield [tokenizer.eos_token_id]
    for piece in pieces:
        for part in safe_pieces(piece):
            yield tokenizer(part, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]


class SlidingWindows:
    """The windows over a token stream, found as the stream grows: (start, end, scored), input IDs [start, end)
    predicting the IDs [start + 1, end + 1), of which the last `scored` are scored (the earlier ones were scored by
    previous windows). Windows start every `stride` tokens and hold up to `context_length` inputs; once the stream
    has ended, the last one may be shorter, so that every token after the first is scored."""

    def __init__(self, context_length: int, stride: int):
        self.context_length, self.stride = context_length, stride
        self.start, self.scored_until = 0, 0  # targets at positions 1..scored_until are already scored

    def ready(self, available: int, ended: bool = False) -> Iterator[tuple[int, int, int]]:
        """The next windows that the first `available` tokens of the stream hold (all of them once `ended`)."""
        while True:
            if ended:
                if self.scored_until >= available - 1:
                    return
                end = min(self.start + self.context_length, available - 1)
            elif self.start + self.context_length + 1 <= available:
                end = self.start + self.context_length
            else:
                return
            yield self.start, end, end - self.scored_until
            self.scored_until = end
            self.start += self.stride


def sliding_windows(tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over a stream of `tokens` IDs, as (start, end, scored): see `SlidingWindows`."""
    return list(SlidingWindows(context_length, stride).ready(tokens, ended=True))


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
    exactly the training loop's k validation windows over the same IDs (see the module's docstring).
    """
    return score_token_stream(model, [torch.as_tensor(token_ids, dtype=torch.long)], context_length, stride, batch_size)


@torch.no_grad()
def score_token_stream(
    model: PreTrainedModel,
    chunks: Iterable[Sequence[int] | torch.Tensor],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> tuple[float, int]:
    """`score_token_ids` of the stream made of `chunks`, read one at a time: memory holds one chunk and one batch
    of windows, however long the stream.

    Windows of equal length go through the model `batch_size` at a time, and the loss is computed without a
    batch's [batch, tokens, vocab] logits: the output head takes the scored positions' hidden states a block of
    rows at a time (`train.book.token_losses`).
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
    windows = SlidingWindows(context_length, stride)
    buffer = torch.zeros(0, dtype=torch.long)  # the stream from token `offset` on
    offset, seen = 0, 0
    batch: list[tuple[torch.Tensor, int]] = []  # (window's tokens [inputs + 1], scored), all of one length
    totals = [0.0, 0]

    def score_batch() -> None:
        # Only a stream's last window can be shorter; batches never mix lengths, so no padding is needed.
        tokens = torch.stack([window for window, _ in batch]).to(model.device)  # [batch, window + 1]
        keep = max(scored for _, scored in batch)
        losses = token_losses(model, tokens[:, :-1], tokens[:, 1:], scored=keep)  # [batch, keep]
        already = (
            torch.arange(keep, device=losses.device)
            < keep - torch.tensor([scored for _, scored in batch], device=losses.device)[:, None]
        )  # scored by an earlier window
        totals[0] += losses.masked_fill(already, 0.0).sum().item()
        totals[1] += sum(scored for _, scored in batch)
        batch.clear()

    for chunk in itertools.chain(chunks, [None]):
        if chunk is not None:
            buffer = torch.cat([buffer, torch.as_tensor(chunk, dtype=torch.long)])
            seen += len(chunk)
        for start, end, scored in windows.ready(seen, ended=chunk is None):
            window = buffer[start - offset : end + 1 - offset]
            if batch and (len(batch) == batch_size or len(batch[0][0]) != len(window)):
                score_batch()
            batch.append((window, scored))
        buffer, offset = buffer[windows.start - offset :], windows.start  # tokens no later window needs go
    if batch:
        score_batch()
    return totals[0], totals[1]


def score_pieces(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[Iterable[str]],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    total_bytes: int | None = None,
) -> dict[str, float | int]:
    """`evaluate_text` of texts each given as pieces (a file's `read_text_pieces`), read as they are scored."""
    was_training = model.training
    model.eval()
    total_nats, total_tokens, read = 0.0, 0, 0
    with tqdm(total=total_bytes, desc="evaluating", unit="B", unit_scale=True, disable=None) as bar:

        def counted(pieces: Iterable[str]) -> Iterator[str]:
            nonlocal read
            for piece in pieces:
                size = len(piece.encode("utf-8"))
                read += size
                bar.update(size)
                yield piece

        try:
            for pieces in texts:
                chunks = text_token_chunks(tokenizer, counted(pieces))
                nats, tokens = score_token_stream(model, chunks, context_length, stride, batch_size)
                total_nats += nats
                total_tokens += tokens
        finally:
            model.train(was_training)
    if total_tokens == 0:
        raise InputError(
            "the texts hold no token to score (a text needs two tokens, counting the leading end-of-text token); "
            "pass longer text"
        )
    loss = total_nats / total_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / math.log(2) / read,
        "tokens": total_tokens,
        "bytes": read,
    }


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
    "tokens": tokens scored, "bytes": UTF-8 bytes of the texts}. Texts with no token to score are an InputError.
    """
    return score_pieces(
        model,
        tokenizer,
        [[text] for text in texts],
        context_length,
        stride,
        batch_size,
        sum(len(text.encode("utf-8")) for text in texts),
    )


def evaluate_files(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    paths: Sequence[str | os.PathLike],
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> dict[str, float | int]:
    """`evaluate_text` of UTF-8 text files, each read in pieces as it is scored: memory does not grow with them."""
    return score_pieces(
        model,
        tokenizer,
        [read_text_pieces(Path(path)) for path in paths],
        context_length,
        stride,
        batch_size,
        sum(os.path.getsize(path) for path in paths),
    )


def check_text_file(path: str | os.PathLike) -> None:
    """Reads a data file through once, in pieces, and raises an InputError naming it unless it is UTF-8 text with
    something besides white space in it."""
    path, fix = Path(path), "pass a UTF-8 text file with text to evaluate on"
    if not path.exists():
        raise InputError(f"data file {path} does not exist; {fix}")
    if path.is_dir():
        raise InputError(f"data file {path} is a directory, not a file; {fix}")
    has_text = False
    try:
        for piece in read_text_pieces(path):
            has_text = has_text or not piece.isspace()
    except NotTextError as error:
        raise InputError(f"data file {path} is {error.reason} (byte offset {error.offset}); {fix}") from None
    except OSError as error:
        raise InputError(f"cannot read data file {path} ({error.strerror}); {fix}") from None
    if not has_text:
        raise InputError(f"data file {path} is empty; pass a file with text to evaluate on")
