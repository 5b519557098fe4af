"""The book's chapter 5 functions for GPTScratchForCausalLM, and the seeded sample both training engines print.

`calc_loss_batch`, `calc_loss_loader`, `evaluate_model`, `generate_and_print_sample` and `train_model_simple` keep
the book's names, arguments and printed lines, so chapter 5's code runs with this package's model and loaders. The
loss they compute is `train.loss.lm_loss`, the engines' own; `generate_sample` draws from a generator of its own,
so a sample never moves the training's random state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from modeling_gptscratch import GPTScratchForCausalLM, text_to_token_ids, token_ids_to_text
from train.loss import lm_loss


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
