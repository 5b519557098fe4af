"""train.book: the book's chapter 5 functions on GPTScratchForCausalLM, against the book's own."""

from __future__ import annotations

import torch

from modeling_gptscratch import GPTScratchConfig, GPTScratchForCausalLM
from train import corpus as C
from train import vocabulary as V
from train import windows as W


def copy_book_weights(book: torch.nn.Module, ours: GPTScratchForCausalLM, config: dict) -> None:
    """The book's GPTModel weights into GPTScratchForCausalLM through the converter's own mapping (an untied head)."""
    from convert.book_checkpoint import book_to_gptscratch

    state = {name: tensor.detach().clone() for name, tensor in book.state_dict().items()}
    ours.load_state_dict(dict(book_to_gptscratch(state, config, tied=False, dtype=torch.float32)))


def test_train_model_simple_matches_the_books_on_the_same_weights(corpus, cache, monkeypatch, capsys):
    """train_model_simple + create_dataloader on GPTScratchForCausalLM reproduce chapter 5's losses."""
    from llms_from_scratch import ch04, ch05

    from train.book import calc_loss_loader, train_model_simple

    text = corpus.read_text(encoding="utf-8")[:12_000]
    local = C.local_corpus([str(corpus)])
    tokenizer = V.train_bpe_tokenizer(C.training_text(local, C.scan_corpus(local, progress=False), 0.9), 300)
    cfg = {
        "vocab_size": 300,
        "context_length": 32,
        "emb_dim": 32,
        "n_heads": 4,
        "n_layers": 2,
        "drop_rate": 0.0,
        "qkv_bias": True,
    }
    torch.manual_seed(123)
    book_model = ch04.GPTModel(cfg)
    our_model = GPTScratchForCausalLM(GPTScratchConfig(**cfg, tie_word_embeddings=False))
    copy_book_weights(book_model, our_model, cfg)
    split_idx = int(0.9 * len(text))

    def run(model, train_function):
        torch.manual_seed(123)
        train_loader = W.create_dataloader(text[:split_idx], tokenizer, batch_size=2, max_length=32, stride=32)
        val_loader = W.create_dataloader(
            text[split_idx:], tokenizer, batch_size=2, max_length=32, stride=32, shuffle=False, drop_last=False
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        return train_function(
            model,
            train_loader,
            val_loader,
            optimizer,
            "cpu",
            num_epochs=2,
            eval_freq=10,
            eval_iter=2,
            start_context="The",
            tokenizer=tokenizer,
        ), val_loader

    # The book prints samples through tiktoken's encode signature; the losses are what is compared.
    monkeypatch.setattr(ch05, "generate_and_print_sample", lambda *args: None)
    (book_train, book_val, book_tokens), _ = run(book_model, ch05.train_model_simple)
    capsys.readouterr()
    (our_train, our_val, our_tokens), val_loader = run(our_model, train_model_simple)
    printed = capsys.readouterr().out
    assert our_tokens == book_tokens and len(our_train) >= 8
    torch.testing.assert_close(our_train, book_train, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(our_val, book_val, rtol=1e-4, atol=1e-4)
    assert our_val[-1] < our_val[0] - 0.5
    assert "Ep 2 (Step 000" in printed and printed.count("The") >= 2  # progress lines, and a sample per epoch
    full_val = calc_loss_loader(val_loader, our_model.eval(), "cpu")
    assert abs(full_val - ch05.calc_loss_loader(val_loader, book_model.eval(), "cpu")) < 1e-4
