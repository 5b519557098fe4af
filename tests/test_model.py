"""The model's contract: shapes, causality, loss, cache, decoding, padding, saving, registration, bad arguments."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, byte_level_tokenizer, run_without_project, tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin
from transformers.cache_utils import StaticCache

from modeling_gptscratch import PRESETS, GPTScratchConfig, GPTScratchForCausalLM, GPTScratchModel
from train.loss import causal_lm_loss


def random_ids(batch: int, tokens: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))


class LogitsOnly(torch.nn.Module):
    """The book's models return the logits tensor itself; this view of ours does too."""

    def __init__(self, model: GPTScratchForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids).logits


# --- configuration ---------------------------------------------------------------------------------------------------


def test_book_config_dict_builds_a_model_with_hf_names():
    from llms_from_scratch.ch04 import GPTModel

    book_cfg = {
        "vocab_size": 50257,
        "context_length": 256,
        "emb_dim": 768,
        "n_heads": 12,
        "n_layers": 12,
        "drop_rate": 0.1,
        "qkv_bias": False,
    }
    config = GPTScratchConfig(**book_cfg)
    assert (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.max_position_embeddings,
    ) == (768, 12, 12, 256)
    assert config.tie_word_embeddings
    with torch.device("meta"):  # sizes only: no need to fill 160M parameters
        model = GPTScratchForCausalLM(config)
        book_model = GPTModel(book_cfg)
        untied = GPTScratchForCausalLM(GPTScratchConfig(**book_cfg, tie_word_embeddings=False))
    # Same architecture, so the same parameter count: fused or separate q/k/v hold the same weights, and the
    # book's separate output head is one vocab x emb matrix that ours shares with the token embedding.
    book_params = sum(p.numel() for p in book_model.parameters())
    assert model.num_parameters() == book_params - 50257 * 768
    assert untied.num_parameters() == book_params


def test_hf_names_set_the_book_fields():
    config = GPTScratchConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=8, max_position_embeddings=48)
    assert (config.emb_dim, config.n_layers, config.n_heads, config.context_length) == (64, 3, 8, 48)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_configs(name):
    config = GPTScratchConfig.from_preset(name, drop_rate=0.0)
    assert config.drop_rate == 0.0 and config.emb_dim % config.n_heads == 0
    if name.startswith("gpt2-"):
        assert config.context_length == 1024 and config.qkv_bias and config.tie_word_embeddings


def test_openai_preset_sizes_match_published_parameter_counts():
    with torch.device("meta"):
        counts = {name: GPTScratchForCausalLM(GPTScratchConfig.from_preset(name)).num_parameters() for name in PRESETS}
    assert counts["gpt2-124m"] == 124_439_808  # GPT-2 small, tied head: OpenAI's 124M
    assert counts["gpt2-355m"] == 354_823_168
    assert counts["gpt2-774m"] == 774_030_080
    assert counts["gpt2-1558m"] == 1_557_611_200
    d, blocks = 128, 4  # tiny: GPT-2's vocabulary and tied head, 256 positions, no qkv bias
    block = 2 * 2 * d + 3 * d * d + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert counts["tiny"] == 50257 * d + 256 * d + blocks * block + 2 * d == 7_257_472


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("emb_dim", 100, "emb_dim (100) must be divisible by n_heads (12)"),
        ("n_layers", 0, "n_layers must be a positive integer"),
        ("vocab_size", -5, "vocab_size must be a positive integer"),
        ("context_length", 1.5, "context_length must be a positive integer"),
        ("n_heads", 0, "n_heads must be a positive integer"),
        ("drop_rate", 1.0, "drop_rate must be in [0, 1)"),
        ("drop_rate", -0.1, "drop_rate must be in [0, 1)"),
        ("attention_dropout", 1.0, "attention_dropout must be in [0, 1)"),
        ("attention_dropout", "0.1", "attention_dropout must be in [0, 1)"),
    ],
)
def test_impossible_config_values_are_rejected_by_name(field, value, fragment):
    with pytest.raises(ValueError, match=__import__("re").escape(fragment)):
        GPTScratchConfig(**{field: value})


def attention_dropout_seen_by_sdpa(model: GPTScratchForCausalLM, monkeypatch) -> set[float]:
    """The dropout_p values one forward pass hands to scaled_dot_product_attention."""
    seen = set()
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.add(kwargs["dropout_p"])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model(random_ids(2, 8))
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    return seen


def test_attention_dropout_defaults_to_the_books_drop_rate_and_can_be_set_alone(monkeypatch):
    """The book's MultiHeadAttention drops attention weights at drop_rate: so does a config without
    attention_dropout. Set, it alone decides the attention weights' dropout; drop_rate keeps the others."""
    book = GPTScratchForCausalLM(tiny_config(drop_rate=0.1)).train()
    assert attention_dropout_seen_by_sdpa(book, monkeypatch) == {0.1}
    assert attention_dropout_seen_by_sdpa(book.eval(), monkeypatch) == {0.0}

    fused = GPTScratchForCausalLM(tiny_config(drop_rate=0.1, attention_dropout=0.0)).train()
    assert attention_dropout_seen_by_sdpa(fused, monkeypatch) == {0.0}
    assert {module.p for module in fused.modules() if isinstance(module, torch.nn.Dropout)} == {0.1}
    ids = random_ids(2, 8)
    assert not torch.equal(fused(ids).logits, fused(ids).logits)  # embedding and residual dropout still on

    only_attention = GPTScratchForCausalLM(tiny_config(drop_rate=0.0, attention_dropout=0.3)).train()
    assert attention_dropout_seen_by_sdpa(only_attention, monkeypatch) == {0.3}
    assert not torch.equal(only_attention(ids).logits, only_attention(ids).logits)


def test_attention_dropout_is_saved_and_a_config_without_it_keeps_the_books_meaning(tmp_path):
    config = tiny_config(drop_rate=0.1, attention_dropout=0.0)
    config.save_pretrained(tmp_path)
    reloaded = GPTScratchConfig.from_pretrained(tmp_path)
    assert (reloaded.attention_dropout, reloaded.attention_dropout_rate) == (0.0, 0.0)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["attention_dropout"]  # a directory written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = GPTScratchConfig.from_pretrained(tmp_path)
    assert (old.attention_dropout, old.attention_dropout_rate) == (None, 0.1)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny, gpt2-124m"):
        GPTScratchConfig.from_preset("huge")


# --- forward ---------------------------------------------------------------------------------------------------------


def test_logits_shape_and_output_type(tiny_model):
    out = tiny_model(random_ids(3, 11))
    assert out.logits.shape == (3, 11, 97)
    assert type(out).__name__ == "CausalLMOutputWithPast"
    assert tiny_model.model(random_ids(3, 11)).last_hidden_state.shape == (3, 11, 32)


def test_causality_changing_a_token_leaves_earlier_logits_unchanged(tiny_model):
    ids = random_ids(2, 20)
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 97
    before, after = tiny_model(ids).logits, tiny_model(changed).logits
    torch.testing.assert_close(before[:, :12], after[:, :12], rtol=0, atol=0)
    assert not torch.allclose(before[:, 12:], after[:, 12:])


def test_loss_is_cross_entropy_of_shifted_logits_ignoring_minus_100(tiny_model):
    ids = random_ids(2, 16)
    labels = ids.clone()
    labels[0, :5] = -100
    out = tiny_model(ids, labels=labels)
    logits = out.logits.double()
    manual_terms = []
    for row in range(2):
        for t in range(15):
            target = labels[row, t + 1].item()
            if target != -100:
                manual_terms.append(-torch.log_softmax(logits[row, t], dim=-1)[target])
    torch.testing.assert_close(out.loss.double(), torch.stack(manual_terms).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("accumulation", [False, True])
def test_loss_and_its_gradient_equal_transformers_causal_lm_loss(dtype, accumulation):
    from transformers.loss.loss_utils import ForCausalLMLoss

    # GPT-2's vocabulary, so the loss works through several row blocks, the last one partial.
    vocab = 50257
    logits = (torch.randn(3, 13, vocab, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    labels = random_ids(3, 13, vocab=vocab)
    labels[1, :6] = -100
    num_items = torch.tensor(50) if accumulation else None  # the Trainer's count over all accumulated batches
    losses, grads = [], []
    for loss_function in (causal_lm_loss, ForCausalLMLoss):
        leaf = logits.clone().requires_grad_()
        loss = loss_function(leaf, labels, vocab_size=vocab, num_items_in_batch=num_items)
        loss.backward()
        losses.append(loss)
        grads.append(leaf.grad.float())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-3  # bf16 gradients carry 8 bits of mantissa
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=tolerance)
    assert grads[0][1, :5].abs().max() == 0  # positions whose next label is ignored get no gradient


def test_model_uses_transformers_loss_function_and_accepts_a_replacement(tiny_model):
    """Any transformers causal LM's loss (`ForCausalLMLoss`) by default; the package's CPU loss, or any other,
    by assignment, for that model alone."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    ids = random_ids(2, 8)
    assert tiny_model.loss_function is ForCausalLMLoss
    model = GPTScratchForCausalLM(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    model.loss_function = causal_lm_loss
    torch.testing.assert_close(model(ids, labels=ids).loss, tiny_model(ids, labels=ids).loss)
    model.loss_function = lambda logits, labels, **kwargs: logits.sum() * 0 + 7.0
    assert model(ids, labels=ids).loss.item() == 7.0
    assert tiny_model.loss_function is ForCausalLMLoss


def test_books_calc_loss_batch_works_on_the_logits(tiny_model):
    from llms_from_scratch.ch05 import calc_loss_batch

    ids = random_ids(2, 17)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    book_loss = calc_loss_batch(inputs, targets, LogitsOnly(tiny_model), "cpu")
    torch.testing.assert_close(book_loss, F.cross_entropy(tiny_model(inputs).logits.flatten(0, 1), targets.flatten()))


def test_cached_and_uncached_logits_are_equal(tiny_model):
    ids = random_ids(2, 24)
    full = tiny_model(ids).logits
    prefix = tiny_model(ids[:, :10], use_cache=True)
    chunk = tiny_model(ids[:, 10:17], past_key_values=prefix.past_key_values, use_cache=True)
    step = tiny_model(ids[:, 17:18], past_key_values=chunk.past_key_values, use_cache=True)
    torch.testing.assert_close(
        torch.cat([prefix.logits, chunk.logits, step.logits], 1), full[:, :18], rtol=1e-5, atol=1e-5
    )
    assert type(step.past_key_values).__name__ == "DynamicCache"
    assert step.past_key_values.get_seq_length() == 18


def test_a_static_cache_gives_the_uncached_logits(tiny_model):
    ids = random_ids(2, 24)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    full = tiny_model(ids, attention_mask=mask).logits
    cache = StaticCache(config=tiny_model.config, max_cache_len=32)  # longer than the tokens: the rest is unfilled
    prefix = tiny_model(ids[:, :10], attention_mask=mask[:, :10], past_key_values=cache, use_cache=True)
    step = tiny_model(ids[:, 10:11], attention_mask=mask[:, :11], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(torch.cat([prefix.logits, step.logits], 1), full[:, :11], rtol=1e-5, atol=1e-5)
    assert int(cache.get_seq_length()) == 11


@pytest.mark.parametrize("mode", ["bf16 weights", "bf16 autocast"])
def test_bf16_decoding_steps_match_the_uncached_logits(tiny_model, mode):
    # One-token steps on CPU attend in fp32 (SDPA's bf16 kernel is slow there); the result must not change.
    model = GPTScratchForCausalLM(tiny_model.config).eval()
    model.load_state_dict(tiny_model.state_dict())
    if mode == "bf16 weights":
        model.to(torch.bfloat16)
    ids = random_ids(2, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16 autocast"):
        full = model(ids).logits
        cache = model(ids[:, :12], use_cache=True).past_key_values
        steps = []
        for t in range(12, 20):
            steps.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    assert steps[0].dtype == torch.bfloat16
    torch.testing.assert_close(torch.cat(steps, 1).float(), full[:, 12:].float(), rtol=0, atol=0.02)


def test_left_padded_batch_gives_each_row_its_own_logits(tiny_model):
    long, short = random_ids(1, 9, seed=2), random_ids(1, 5, seed=3)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    logits = tiny_model(batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0], tiny_model(long).logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1, 4:], tiny_model(short).logits[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logits).all()


def test_sequence_longer_than_the_context_is_refused(tiny_model):
    with pytest.raises(ValueError, match="context_length is 32"):
        tiny_model(random_ids(1, 33))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config(drop_rate=0.0)).train()
    ids = random_ids(2, 16)
    model(ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    if hasattr(model, "activation_checkpointing_enable"):  # newer transformers renamed it; the old name warns
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
    else:
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    config = tiny_config(emb_dim=256, n_heads=4, n_layers=8)
    model = GPTScratchForCausalLM(config)
    block = model.model.trf_blocks[0]
    residual_std = 0.02 / (2 * 8) ** 0.5
    assert block.att.out_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert block.ff.layers[2].weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert block.att.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(block.norm1.weight == 1) and torch.all(block.att.qkv.bias == 0)


def test_head_is_tied_by_default_and_untied_on_request():
    tied = GPTScratchForCausalLM(tiny_config())
    assert tied.out_head.weight.data_ptr() == tied.model.tok_emb.weight.data_ptr()
    untied = GPTScratchForCausalLM(tiny_config(tie_word_embeddings=False))
    assert untied.out_head.weight.data_ptr() != untied.model.tok_emb.weight.data_ptr()


# --- generate --------------------------------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_is_argmax_at_each_step(tiny_model):
    prompt = random_ids(2, 6)
    first = tiny_model.generate(prompt, max_new_tokens=12, temperature=0.0)
    assert first.shape == (2, 18)
    assert torch.equal(first, tiny_model.generate(prompt, max_new_tokens=12, temperature=0.0))
    # Independent expectation: each new token is the argmax of a full (uncached) forward pass.
    logits = tiny_model(first[:, :-1]).logits
    assert torch.equal(first[:, 6:], logits[:, 5:].argmax(-1))


def test_top_k_1_sampling_equals_greedy(tiny_model):
    prompt = random_ids(2, 6)
    greedy = tiny_model.generate(prompt, max_new_tokens=10, temperature=0)
    sampled = tiny_model.generate(
        prompt, max_new_tokens=10, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(greedy, sampled)


def test_seeded_sampling_is_reproducible_and_stays_in_the_top_k(tiny_model):
    prompt = random_ids(4, 5)
    runs = [
        tiny_model.generate(
            prompt, max_new_tokens=15, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(11)
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(3)
    global_seeded = tiny_model.generate(prompt, max_new_tokens=15, temperature=1.0, top_k=3)
    torch.manual_seed(3)
    assert torch.equal(global_seeded, tiny_model.generate(prompt, max_new_tokens=15, temperature=1.0, top_k=3))
    logits = tiny_model(runs[0][:, :-1]).logits[:, 4:]  # the distribution each new token was drawn from
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == runs[0][:, 5:, None]).any(-1).all()
    assert len(torch.unique(runs[0][:, 5:])) > 1  # really sampled, not greedy


def test_higher_temperature_flattens_the_empirical_distribution(tiny_model):
    prompt = random_ids(1, 4).repeat(600, 1)

    def entropy_of_first_token(temperature: float) -> float:
        tokens = tiny_model.generate(
            prompt, max_new_tokens=1, temperature=temperature, generator=torch.Generator().manual_seed(0)
        )[:, -1]
        freq = torch.bincount(tokens, minlength=97).double() / len(tokens)
        return -(freq[freq > 0] * freq[freq > 0].log()).sum().item()

    cold, warm, hot = (entropy_of_first_token(t) for t in (0.3, 1.0, 5.0))
    assert cold < warm < hot


def test_eos_stops_its_row_and_pads_it_while_the_others_go_on(tiny_model):
    prompt = random_ids(2, 6)
    free = tiny_model.generate(prompt, max_new_tokens=10, temperature=0)
    eos = free[0, 8].item()  # row 0's third new token becomes the end-of-sequence token
    assume_row1_differs = eos not in free[1, 6:].tolist()
    out = tiny_model.generate(prompt, max_new_tokens=10, temperature=0, eos_token_id=eos, pad_token_id=0)
    first_eos = free[0, 6:].tolist().index(eos) + 6
    assert torch.equal(out[0, : first_eos + 1], free[0, : first_eos + 1])
    assert (out[0, first_eos + 1 :] == 0).all()
    if assume_row1_differs:
        assert torch.equal(out[1], free[1])


def test_generation_stops_when_every_row_has_finished(tiny_model):
    prompt = random_ids(1, 6)
    free = tiny_model.generate(prompt, max_new_tokens=10, temperature=0)
    out = tiny_model.generate(prompt, max_new_tokens=10, temperature=0, eos_token_id=free[0, 6].item())
    assert out.shape == (1, 7)


def test_left_padded_generation_equals_each_row_alone(tiny_model):
    long, short = random_ids(1, 9, seed=4), random_ids(1, 5, seed=5)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    out = tiny_model.generate(batch, attention_mask=mask, max_new_tokens=30, temperature=0)  # crosses the window
    assert torch.equal(out[0], tiny_model.generate(long, max_new_tokens=30, temperature=0)[0])
    assert torch.equal(out[1, 4:], tiny_model.generate(short, max_new_tokens=30, temperature=0)[0])


def test_long_prompts_and_generation_past_the_window_match_the_books_generate(tiny_model):
    from llms_from_scratch.ch05 import generate as book_generate

    prompt = random_ids(1, 40)  # longer than the 32-token window
    ours = tiny_model.generate(prompt, max_new_tokens=25, temperature=0)
    book = book_generate(LogitsOnly(tiny_model), prompt, max_new_tokens=25, context_size=32)
    assert torch.equal(ours, book)
    torch.manual_seed(5)
    ours = tiny_model.generate(prompt, max_new_tokens=25, temperature=0.8, top_k=5)
    torch.manual_seed(5)
    book = book_generate(LogitsOnly(tiny_model), prompt, max_new_tokens=25, context_size=32, temperature=0.8, top_k=5)
    assert torch.equal(ours, book)


def test_generation_feeds_one_token_per_step_through_the_cache(tiny_model):
    seen_lengths, key_buffers = [], []

    def record(_, args, kwargs, output):
        seen_lengths.append(args[0].shape[1])
        key_buffers.append(kwargs["cache"].layers[0].keys)

    hook = tiny_model.model.register_forward_hook(record, with_kwargs=True)
    try:
        tiny_model.generate(random_ids(1, 10), max_new_tokens=30, temperature=0)
    finally:
        hook.remove()
    # 10-token prefill, one token per step until the 32-token window is full, then the window is re-read.
    assert seen_lengths[:23] == [10] + [1] * 22
    assert seen_lengths[23:] == [32] * 7
    # Within the window each token is written into the same preallocated keys: nothing grows or is copied.
    assert len({buffer.data_ptr() for buffer in key_buffers[:23]}) == 1
    assert key_buffers[0].shape[2] == 32


def test_options_the_override_does_not_implement_go_to_generation_mixin(tiny_model):
    prompt = random_ids(2, 6)
    for options in ({"num_beams": 3}, {"repetition_penalty": 3.0}, {"no_repeat_ngram_size": 2}):
        ours = tiny_model.generate(prompt, max_new_tokens=8, temperature=0, **options)
        reference = GenerationMixin.generate(tiny_model, prompt, max_new_tokens=8, do_sample=False, **options)
        assert torch.equal(ours, reference), options
    greedy = tiny_model.generate(prompt, max_new_tokens=8, temperature=0)
    assert not torch.equal(greedy, tiny_model.generate(prompt, max_new_tokens=8, temperature=0, no_repeat_ngram_size=1))
    with pytest.raises(ValueError, match="generator works with the built-in decoding only"):
        tiny_model.generate(prompt, max_new_tokens=2, top_p=0.9, temperature=1.0, generator=torch.Generator())


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_transformers_greedy_search_agrees_with_the_override(tiny_model, cache_implementation):
    prompt = random_ids(2, 6)
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0  # left padding
    ours = tiny_model.generate(prompt, attention_mask=mask, max_new_tokens=12, temperature=0)
    theirs = GenerationMixin.generate(
        tiny_model,
        prompt,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        cache_implementation=cache_implementation,
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
    ],
)
def test_impossible_generate_arguments_raise_by_name(tiny_model, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_model.generate(random_ids(1, 4), **kwargs)


def test_empty_prompt_is_refused(tiny_model):
    with pytest.raises(ValueError, match="input_ids is empty"):
        tiny_model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3)


def test_zero_new_tokens_returns_the_prompt(tiny_model):
    prompt = random_ids(1, 4)
    assert torch.equal(tiny_model.generate(prompt, max_new_tokens=0), prompt)


# --- saving, Auto classes, remote code, pipeline ---------------------------------------------------------------------


def test_auto_classes_know_the_model_after_import():
    fields = {k: v for k, v in tiny_config().to_dict().items() if k != "model_type"}
    config = AutoConfig.for_model("gptscratch", **fields)
    assert isinstance(config, GPTScratchConfig)
    assert isinstance(AutoModelForCausalLM.from_config(config), GPTScratchForCausalLM)
    assert isinstance(AutoModel.from_config(config), GPTScratchModel)


def test_save_then_load_through_auto_classes_gives_identical_logits(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "modeling_gptscratch.py"} <= files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "gptscratch"
    assert saved["auto_map"]["AutoModelForCausalLM"] == "modeling_gptscratch.GPTScratchForCausalLM"
    assert (tmp_path / "modeling_gptscratch.py").read_text() == (REPO_ROOT / "modeling_gptscratch.py").read_text()
    ids = random_ids(2, 12)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is GPTScratchForCausalLM
    torch.testing.assert_close(loaded(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(base(ids).last_hidden_state, tiny_model.model(ids).last_hidden_state, rtol=0, atol=0)


def test_untied_head_survives_saving(tmp_path):
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config(tie_word_embeddings=False)).eval()
    model.save_pretrained(tmp_path)
    loaded = GPTScratchForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.out_head.weight, model.out_head.weight, rtol=0, atol=0)
    assert not torch.equal(loaded.out_head.weight, loaded.model.tok_emb.weight)


def test_remote_code_loads_in_a_fresh_interpreter_without_the_project(tiny_model, tmp_path):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    ids = random_ids(2, 12)
    torch.save(
        {
            "ids": ids,
            "logits": tiny_model(ids).logits.detach(),
            "greedy": tiny_model.generate(ids, max_new_tokens=5, temperature=0),
        },
        tmp_path / "expected.pt",
    )
    result = run_without_project(
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoModel\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "assert torch.equal(model(expected['ids']).logits, expected['logits'])\n"
        "assert torch.equal(model.generate(expected['ids'], max_new_tokens=5, temperature=0), expected['greedy'])\n"
        f"AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True)\n"
        "print('remote code ok')\n",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "remote code ok" in result.stdout


def test_model_file_imports_only_torch_transformers_and_the_standard_library():
    import ast
    import sys

    tree = ast.parse((REPO_ROOT / "modeling_gptscratch.py").read_text())
    roots = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    roots |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert roots - set(sys.stdlib_module_names) - {"torch", "transformers"} == set()


def test_text_generation_pipeline_works(tmp_path):
    from transformers import pipeline

    tokenizer = byte_level_tokenizer(vocab_size=300)
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)).eval()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompt = "the cat"
    text = generator(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([tokenizer.encode(prompt)])
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=6, temperature=0)[0])
    assert text == expected and text.startswith(prompt)


def test_hidden_states_follow_gpt2s_convention(tiny_model):
    ids = random_ids(2, 7)
    out = tiny_model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == tiny_model.config.n_layers + 1
    embeddings = tiny_model.model.tok_emb(ids) + tiny_model.model.pos_emb(torch.arange(7))
    torch.testing.assert_close(out.hidden_states[0], embeddings)
    torch.testing.assert_close(out.hidden_states[-1], tiny_model.model(ids).last_hidden_state)
    assert tiny_model(ids).hidden_states is None


def logits_under_each_path(model: GPTScratchForCausalLM) -> dict[str, torch.Tensor]:
    """Logits of one batch through every mask path: left padding, packed sequences (restarting position_ids), a
    dynamic cache continued by a chunk, a StaticCache continued by one-token steps."""
    ids = random_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    prefix = model(ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
    static = StaticCache(config=model.config, max_cache_len=20)
    steps = [model(ids[:, :8], attention_mask=mask[:, :8], past_key_values=static, use_cache=True).logits]
    for t in (8, 9):
        steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=static).logits)
    return {
        "padded": model(ids, attention_mask=mask).logits[:, 4:],  # the padding's own logits are no one's
        "packed": model(ids, position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]])).logits,
        "dynamic cache": model(ids[:, 8:], attention_mask=mask, past_key_values=prefix.past_key_values).logits,
        "static cache": torch.cat(steps, 1)[:, 4:],
    }


@pytest.mark.parametrize("implementation", ["eager", "flex_attention"])
def test_every_attention_implementation_gives_sdpas_logits(tiny_model, implementation):
    """transformers' attention interface: eager (its own mask and matmuls) and flex attention (a compiled BlockMask)
    give the default SDPA's logits. Flex attention on a CPU runs forward only (no backward there) and where torch
    2.13's inductor compiles it: not for a chunk of queries against a longer cache, so padding and packing only."""
    expected = logits_under_each_path(tiny_model)
    tiny_model.set_attn_implementation(implementation)
    try:
        if implementation == "flex_attention":
            torch.set_grad_enabled(False)
            ids = random_ids(2, 12)
            mask = torch.ones_like(ids)
            mask[1, :4] = 0
            got = {"padded": tiny_model(ids, attention_mask=mask).logits[:, 4:]}
            positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]])
            got["packed"] = tiny_model(ids, position_ids=positions).logits
        else:
            got = logits_under_each_path(tiny_model)
    finally:
        tiny_model.set_attn_implementation("sdpa")
        torch.set_grad_enabled(True)
    for path, logits in got.items():
        torch.testing.assert_close(logits, expected[path], rtol=1e-5, atol=1e-5, msg=path)


def test_attention_implementation_is_chosen_at_loading(tmp_path, tiny_model):
    assert tiny_model.config._attn_implementation == "sdpa"  # the default
    tiny_model.save_pretrained(tmp_path)
    eager = GPTScratchForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="not_an_attention"):
        GPTScratchForCausalLM.from_pretrained(tmp_path, attn_implementation="not_an_attention")


def test_output_attentions_are_gpt2s_with_eager_and_refused_without(tiny_model):
    """The weights each layer returns under eager attention equal GPT2LMHeadModel's on the same weights (a padded
    batch); SDPA computes none, so asking for them there is refused rather than answered with None."""
    from convert.gpt2_export import to_gpt2

    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # GPT-2 counts positions from 0 unless told
    gpt2 = to_gpt2(tiny_model).eval()
    gpt2.set_attn_implementation("eager")
    theirs = gpt2(ids, attention_mask=mask, position_ids=position_ids, output_attentions=True).attentions
    with pytest.raises(ValueError, match="output_attentions needs attn_implementation='eager'"):
        tiny_model(ids, output_attentions=True)
    tiny_model.set_attn_implementation("eager")
    try:
        ours = tiny_model(ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        tiny_model.set_attn_implementation("sdpa")
    assert len(ours) == tiny_model.config.n_layers and ours[0].shape == (2, 4, 9, 9)
    for layer_ours, layer_theirs in zip(ours, theirs):
        torch.testing.assert_close(layer_ours[1, :, 3:], layer_theirs[1, :, 3:], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer_ours[0], layer_theirs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[0].sum(-1), torch.ones(2, 4, 9))  # each query's weights sum to 1


def test_inputs_embeds_give_the_logits_of_their_input_ids(tiny_model):
    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    embeds = tiny_model.get_input_embeddings()(ids)
    expected = tiny_model(ids, attention_mask=mask).logits
    torch.testing.assert_close(tiny_model(inputs_embeds=embeds, attention_mask=mask).logits, expected)
    cache = tiny_model(inputs_embeds=embeds[:, :5], attention_mask=mask[:, :5], use_cache=True).past_key_values
    step = tiny_model(ids[:, 5:], attention_mask=mask, past_key_values=cache).logits
    torch.testing.assert_close(step, expected[:, 5:], rtol=1e-5, atol=1e-5)
    for arguments in ({}, {"input_ids": ids, "inputs_embeds": embeds}):
        with pytest.raises(ValueError, match="either input_ids"):
            tiny_model(**arguments)
    with pytest.raises(ValueError, match=r"inputs_embeds must be a \[batch, tokens, 32\] tensor"):
        tiny_model(inputs_embeds=embeds[..., :16])
