"""The loss of next-token prediction, as both training engines, the book's functions and evaluation compute it.

`lm_loss`: the mean cross-entropy of a batch of windows against targets already shifted by one. `causal_lm_loss`:
transformers' `ForCausalLMLoss` with the same arguments and values, computed on a CPU a few rows at a time so no
[tokens, vocab] log-probabilities are stored (`benchmarks/bench_loss.py` measures it against transformers'); a model
takes it as `model.loss_function = causal_lm_loss`. `token_losses`: the per-token losses evaluation needs, without a
whole batch's [batch, tokens, vocab] logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from train.windows import document_position_ids


class _CrossEntropyByRows(torch.autograd.Function):
    """Per-token cross-entropy of logits [tokens, vocab] against targets [tokens]; ignored targets get loss 0.

    The values of `F.cross_entropy(logits.float(), targets, reduction="none")`, computed a few rows at a time so each
    block stays in the CPU's cache: no [tokens, vocab] log-probabilities are stored, and the backward writes
    softmax - one_hot straight into the gradient. With GPT-2's vocabulary the loss's forward and backward run 1.5x
    to 1.7x faster in fp32, more in bf16, where the logits are never upcast as a whole (benchmarks/bench_loss.py).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        ignored = targets == ignore_index
        targets = targets.masked_fill(ignored, 0)
        rows = max(1, 2**19 // logits.shape[1])  # 2 MB of fp32 logits
        log_normalizers = torch.cat([torch.logsumexp(block.float(), dim=-1) for block in logits.split(rows)])
        target_logits = logits.gather(1, targets[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, targets, ignored, log_normalizers)
        ctx.rows = rows
        return (log_normalizers - target_logits).masked_fill_(ignored, 0.0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, ignored, log_normalizers = ctx.saved_tensors
        scale = grad_losses.masked_fill(ignored, 0.0)
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.rows):
            block = slice(start, start + ctx.rows)
            probs = (logits[block].float() - log_normalizers[block, None]).exp_()
            probs[torch.arange(probs.shape[0], device=probs.device), targets[block]] -= 1
            grad[block] = probs.mul_(scale[block, None])
        return grad, None, None


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' `ForCausalLMLoss`, same arguments and values: position t predicts labels[t + 1].

    logits: [batch, tokens, vocab]; labels: [batch, tokens], `ignore_index` where nothing is predicted, or
    `shift_labels` instead: targets already shifted (position t predicts shift_labels[t]). The mean over predicted
    tokens, or their sum divided by `num_items_in_batch` (the Trainer's gradient accumulation).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    logits = logits.reshape(-1, logits.shape[-1])
    targets = shift_labels.reshape(-1).to(logits.device)
    if logits.device.type == "cpu" and not torch.compiler.is_compiling():
        total = _CrossEntropyByRows.apply(logits, targets, ignore_index).sum()
    else:  # accelerators and torch.compile fuse this themselves; a loop over row blocks would only add steps
        total = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != ignore_index).sum()
    elif torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [batch, tokens, vocab] against targets [batch, tokens] (already shifted)."""
    return causal_lm_loss(logits, labels=None, shift_labels=targets)


def window_logits(model: torch.nn.Module, inputs: torch.Tensor, document_eos_id: int | None) -> torch.Tensor:
    """The model's logits [batch, tokens, vocab] for windows [batch, tokens]; with `document_eos_id` (the
    `--document-mask` option), attention stays inside each document the `<|endoftext|>` separators delimit."""
    position_ids = None if document_eos_id is None else document_position_ids(inputs, document_eos_id)
    return model(inputs, position_ids=position_ids, use_cache=False).logits


# Logits computed at a time when scoring: 16 M values (64 MB in fp32), whatever the batch, the window and the
# vocabulary; large enough that the output head's matrix products run as fast as on a whole batch.
HEAD_BLOCK_LOGITS = 1 << 24


def token_losses(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    document_eos_id: int | None = None,
    scored: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of each position's prediction against its target: inputs, targets [batch, tokens] -> losses
    [batch, tokens] fp32 (only the last `scored` positions, [batch, scored], when given; -100 targets get 0).

    The values of `F.cross_entropy(logits.float(), targets, reduction="none")` without the [batch, tokens, vocab]
    logits: the final hidden states [batch, tokens, emb] go through the output head HEAD_BLOCK_LOGITS logits at a
    time. `model` is the model itself (not a DDP or compile wrapper); the caller turns gradients off and sets up
    autocast. With `document_eos_id`, attention stays inside each document, as in `window_logits`.
    """
    position_ids = None if document_eos_id is None else document_position_ids(inputs, document_eos_id)
    hidden = model.base_model(inputs, position_ids=position_ids, use_cache=False).last_hidden_state
    if scored is not None:
        hidden, targets = hidden[:, -scored:], targets[:, -scored:]
    head = model.get_output_embeddings()
    rows = max(1, HEAD_BLOCK_LOGITS // head.out_features)
    blocks = zip(hidden.reshape(-1, hidden.shape[-1]).split(rows), targets.reshape(-1).split(rows))
    losses = [F.cross_entropy(head(block).float(), block_targets, reduction="none") for block, block_targets in blocks]
    return torch.cat(losses).view(targets.shape)
