"""transformers' generation strategies on the model: each gives, token for token, what it gives without the KV cache.

Without the cache every step re-reads the whole sequence, which is the reference a cache must not change; a model
that dropped or misread the cache GenerationMixin hands it would decode each step against an empty one and fail
here (with padding it would raise). Batches of two rows, with and without left padding, unless a strategy only
takes one row (assisted decoding). A streamer is handed, token by token, exactly what the model's generate returns.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers import GenerationMixin

from modeling_gptscratch import CACHE_NAME, GPTScratchForCausalLM


def random_ids(batch: int, tokens: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def prompt_and_mask(padded: bool, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A [batch, 7] prompt; with `padded`, the last row is left-padded by 3 (its first 3 IDs are padding)."""
    prompt = random_ids(batch, 7)
    mask = torch.ones_like(prompt)
    if padded:
        mask[-1, :3] = 0
        prompt[-1, :3] = 0
    return prompt, mask


def transformers_generate(model: GPTScratchForCausalLM, prompt, mask, use_cache: bool, **options) -> torch.Tensor:
    """GenerationMixin's own generate (the model's override hands these options to it anyway), seeded."""
    torch.manual_seed(1234)
    return GenerationMixin.generate(
        model, prompt, attention_mask=mask, max_new_tokens=10, use_cache=use_cache, pad_token_id=0, **options
    )


def assert_the_cache_changes_nothing(model, padded: bool, **options) -> None:
    prompt, mask = prompt_and_mask(padded)
    cached = transformers_generate(model, prompt, mask, use_cache=True, **options)
    uncached = transformers_generate(model, prompt, mask, use_cache=False, **options)
    assert cached.shape[1] > prompt.shape[1]
    assert cached.tolist() == uncached.tolist(), options


padding = pytest.mark.parametrize("padded", [False, True], ids=["no padding", "left padding"])


@padding
def test_greedy_search(tiny_model, padded):
    assert_the_cache_changes_nothing(tiny_model, padded, do_sample=False)


@padding
def test_beam_search(tiny_model, padded):
    assert_the_cache_changes_nothing(tiny_model, padded, do_sample=False, num_beams=3, num_return_sequences=2)


@padding
def test_beam_sample(tiny_model, padded):
    assert_the_cache_changes_nothing(tiny_model, padded, do_sample=True, num_beams=3, temperature=1.3)


@padding
def test_top_k_and_top_p_sampling_with_a_seed(tiny_model, padded):
    assert_the_cache_changes_nothing(tiny_model, padded, do_sample=True, top_k=20, top_p=0.9, temperature=1.2)


@padding
def test_repetition_penalty(tiny_model, padded):
    assert_the_cache_changes_nothing(tiny_model, padded, do_sample=False, repetition_penalty=2.0)


@padding
def test_static_cache(tiny_model, padded):
    prompt, mask = prompt_and_mask(padded)
    static = transformers_generate(
        tiny_model, prompt, mask, use_cache=True, do_sample=False, cache_implementation="static"
    )
    assert static.tolist() == transformers_generate(tiny_model, prompt, mask, use_cache=False, do_sample=False).tolist()


def assert_assisted_decoding_is_greedy_decoding(model, padded: bool, **assistance) -> None:
    """Assisted decoding needs the cache (it rolls it back past rejected drafts); its greedy output is, by
    construction, plain greedy decoding's, which is the uncached reference. It takes one row at a time."""
    prompt, mask = prompt_and_mask(padded, batch=1)
    assisted = transformers_generate(model, prompt, mask, use_cache=True, do_sample=False, **assistance)
    assert assisted.tolist() == transformers_generate(model, prompt, mask, use_cache=False, do_sample=False).tolist()


@padding
def test_assisted_decoding_with_an_assistant_model(tiny_model, padded):
    torch.manual_seed(7)
    assistant = GPTScratchForCausalLM(tiny_config(n_layers=1)).eval()  # same vocabulary, other weights
    assert_assisted_decoding_is_greedy_decoding(tiny_model, padded, assistant_model=assistant)


@padding
def test_prompt_lookup_decoding(tiny_model, padded):
    assert_assisted_decoding_is_greedy_decoding(tiny_model, padded, prompt_lookup_num_tokens=3)


@padding
def test_continuing_from_the_returned_cache(tiny_model, padded):
    prompt, mask = prompt_and_mask(padded)
    first = tiny_model.generate(
        prompt, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True
    )
    cache = getattr(first, CACHE_NAME)
    assert cache is not None and cache.get_seq_length() == first.sequences.shape[1] - 1
    continued_mask = torch.cat([mask, torch.ones(2, 4, dtype=mask.dtype)], dim=1)
    continued = tiny_model.generate(
        first.sequences,
        attention_mask=continued_mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        **{CACHE_NAME: cache},
    )
    whole = transformers_generate(tiny_model, prompt, mask, use_cache=False, do_sample=False)
    assert continued.tolist() == whole.tolist()


@padding
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.1, "top_k": 10}], ids=["greedy", "top-k"])
def test_the_models_own_generate_equals_its_uncached_decoding(tiny_model, padded, sampling):
    prompt, mask = prompt_and_mask(padded)
    outputs = [
        tiny_model.generate(
            prompt,
            attention_mask=mask,
            max_new_tokens=30,
            use_cache=use_cache,
            eos_token_id=[],
            generator=torch.Generator().manual_seed(5),
            **sampling,
        )
        for use_cache in (True, False)
    ]
    assert outputs[0].shape[1] == prompt.shape[1] + 30  # past the 32-token window: the cache restarts there
    assert outputs[0].tolist() == outputs[1].tolist()


@padding
def test_generating_from_inputs_embeds(tiny_model, padded):
    """What PEFT's prompt tuning hands generate: embeddings, here a learned-looking prefix before the prompt's own.
    The tokens equal those of the uncached decoding from the same embeddings, and, for the prompt's own embeddings
    alone, those decoded from its input_ids (GenerationMixin returns only the new tokens from embeddings)."""
    prompt, mask = prompt_and_mask(padded)
    embeds = tiny_model.get_input_embeddings()(prompt)
    from_ids = tiny_model.generate(prompt, attention_mask=mask, max_new_tokens=10, temperature=0, eos_token_id=[])
    from_embeds = tiny_model.generate(
        inputs_embeds=embeds, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0
    )
    assert from_embeds.tolist() == from_ids[:, prompt.shape[1] :].tolist()

    prefix = torch.randn(2, 3, tiny_model.config.emb_dim, generator=torch.Generator().manual_seed(0))
    embeds, mask = torch.cat([prefix, embeds], 1), torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], 1)
    outputs = [
        GenerationMixin.generate(
            tiny_model,
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=0,
            use_cache=use_cache,
        )
        for use_cache in (True, False)
    ]
    assert outputs[0].shape == (2, 10) and outputs[0].tolist() == outputs[1].tolist()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_continuous_batching_decodes_as_generate(tiny_model, implementation):
    """transformers' continuous batching (generate_batch: one flattened batch of requests, keys and values in a
    PagedAttentionCache, "paged|eager" in place of eager) decodes greedily what generate decodes, request by request."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    prompts = [random_ids(1, length, seed=length)[0].tolist() for length in (3, 7, 5)]
    tiny_model.set_attn_implementation(implementation)
    try:
        results = tiny_model.generate_batch(
            prompts,
            generation_config=GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=-1),
            continuous_batching_config=ContinuousBatchingConfig(num_blocks=16, block_size=16, max_batch_tokens=128),
        )
    finally:
        tiny_model.set_attn_implementation("sdpa")
    expected = [
        tiny_model.generate(torch.tensor([p]), max_new_tokens=12, temperature=0, eos_token_id=[])[0, len(p) :].tolist()
        for p in prompts
    ]
    by_prompt = {tuple(result.prompt_ids): result.generated_tokens for result in results.values()}
    assert [by_prompt[tuple(p)] for p in prompts] == expected


def test_a_pipeline_with_beam_search_decodes_as_without_the_cache():
    from conftest import byte_level_tokenizer
    from transformers import pipeline

    tokenizer = byte_level_tokenizer(vocab_size=300)
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)).eval()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("the cat", max_new_tokens=8, num_beams=3, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([tokenizer.encode("the cat")])
    uncached = GenerationMixin.generate(
        model, ids, max_new_tokens=8, num_beams=3, do_sample=False, use_cache=False, pad_token_id=tokenizer.eos_token_id
    )
    assert text == tokenizer.decode(uncached[0])


def test_no_deprecation_warning_about_the_cache_name(tiny_model, caplog):
    prompt, mask = prompt_and_mask(padded=True)
    with caplog.at_level("WARNING"):
        transformers_generate(tiny_model, prompt, mask, use_cache=True, do_sample=False, num_beams=2)
        tiny_model(prompt, attention_mask=mask)
    assert not [record for record in caplog.records if "deprecated" in record.getMessage()]


# --- streaming --------------------------------------------------------------------------------------------------------


class TokenRecorder:
    """A streamer that keeps what model.generate hands it."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("prompt_tokens, new_tokens", [(5, 12), (10, 40), (45, 10)])  # in, past, and over the window
@pytest.mark.parametrize("temperature, top_k, seed", [(0.0, None, None), (1.0, 5, 7), (1.5, None, 3)])
def test_streamed_tokens_are_the_generated_ones(tiny_model, prompt_tokens, new_tokens, temperature, top_k, seed):
    prompt = torch.randint(0, 97, (1, prompt_tokens), generator=torch.Generator().manual_seed(prompt_tokens))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    streamer = TokenRecorder()
    streamed = tiny_model.generate(
        prompt, max_new_tokens=new_tokens, temperature=temperature, top_k=top_k, generator=generator, streamer=streamer
    )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    expected = tiny_model.generate(
        prompt, max_new_tokens=new_tokens, temperature=temperature, top_k=top_k, generator=generator
    )
    assert torch.equal(streamed, expected)
    assert streamer.puts[0] == prompt.tolist() and streamer.ended
    assert [token for put in streamer.puts[1:] for token in put] == expected[0, prompt_tokens:].tolist()
