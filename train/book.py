"""The book's chapter 5 functions for GPTScratchForCausalLM, and the pieces both training engines share with them.

`calc_loss_batch`, `calc_loss_loader`, `evaluate_model`, `generate_and_print_sample` and `train_model_simple` keep
the book's names, arguments and printed lines, so chapter 5's code runs with this package's model and loaders.
Under them: the loss of a batch of windows (`lm_loss`, `window_logits`), the per-token losses evaluation computes
without a whole batch's logits (`token_losses`), and a seeded sample (`generate_sample`), which the Accelerate loop,
the Trainer engine and gptscratch-eval use too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from modeling_gptscratch import GPTScratchForCausalLM, causal_lm_loss, text_to_token_ids, token_ids_to_text
from train.data import document_position_ids


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


def calc_loss_batch(
    input_batch: torch.Tensor, target_batch: torch.Tensor, model: torch.nn.Module, device: torch.device | str
) -> torch.Tensor:
    """The book's `calc_loss_batch`: the mean next-token cross-entropy of one batch, a scalar tensor.

    input_batch, target_batch: [batch, tokens] token IDs, the targets being the inputs shifted by one.
    """
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch, use_cache=False).logits  # [batch, tokens, vocab]
    return lm_loss(logits, target_batch)


def calc_loss_loader(
    data_loader: DataLoader, model: torch.nn.Module, device: torch.device | str, num_batches: int | None = None
) -> float:
    """The book's `calc_loss_loader`: the mean of the first `num_batches` batch losses (all by default).

    NaN for an empty loader, as in the book.
    """
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model(
    model: torch.nn.Module, train_loader: DataLoader, val_loader: DataLoader, device: torch.device | str, eval_iter: int
) -> tuple[float, float]:
    """The book's `evaluate_model`: (train loss, validation loss) over `eval_iter` batches each, in eval mode."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_sample(
    model: GPTScratchForCausalLM,
    tokenizer: Any,
    start_context: str,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 123,
) -> str:
    """A continuation of `start_context`; sampling draws from its own seeded generator, never from the training's."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = text_to_token_ids(start_context, tokenizer).to(device)  # [1, tokens]
    encoded = encoded[:, -model.config.context_length :]
    generator = torch.Generator(device=device).manual_seed(seed)
    token_ids = model.generate(
        encoded, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, generator=generator
    )
    model.train(was_training)
    return token_ids_to_text(token_ids, tokenizer)


def generate_and_print_sample(
    model: GPTScratchForCausalLM, tokenizer: Any, device: torch.device | str, start_context: str
) -> None:
    """The book's `generate_and_print_sample`: 50 greedy tokens after `start_context`, printed on one line."""
    print(generate_sample(model.to(device), tokenizer, start_context).replace("\n", " "))


def train_model_simple(
    model: GPTScratchForCausalLM,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
    start_context: str,
    tokenizer: Any,
) -> tuple[list[float], list[float], list[int]]:
    """The book's `train_model_simple`: returns (train_losses, val_losses, track_tokens_seen), one per evaluation.

    Evaluates after global step 0 and every `eval_freq` steps; prints a sample after each epoch.
    """
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen
