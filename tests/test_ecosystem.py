"""The tools people apply to any transformers causal LM, applied to this one: transformers' losses (against
GPT2LMHeadModel), PEFT's LoRA and prompt learning, packed sequences (transformers' flattening collator, TRL's
SFTTrainer), and torch.compile without graph breaks. lm-eval has its own file (test_tasks.py), generation strategies too
(test_generation.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers.cache_utils import DynamicCache, StaticCache

from convert.gpt2_export import to_gpt2
from modeling_gptscratch import GPTScratchForCausalLM


def random_ids(batch: int, tokens: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))


# --- losses as transformers' models compute them -------------------------------------------------------------------


def loss_and_gradient(model: torch.nn.Module, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and the gradient of the token embedding (shared by both models: to_gpt2 shares the tensors)."""
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    embedding = model.get_input_embeddings().weight
    return loss.detach(), embedding.grad.clone()


@pytest.mark.parametrize(
    "case",
    ["labels", "labels with -100", "labels and num_items_in_batch", "shift_labels and labels", "shift_labels alone"],
)
def test_losses_equal_gpt2lmheadmodels(tiny_model, case):
    ids = random_ids(2, 9)
    labels = ids.clone()
    labels[0, :3] = -100
    shifted = torch.roll(ids, -2, dims=1)  # targets that are not the labels' own shift
    shifted[1, -3:] = -100
    ours_inputs = {
        "labels": {"labels": ids},
        "labels with -100": {"labels": labels},
        "labels and num_items_in_batch": {"labels": labels, "num_items_in_batch": torch.tensor(40)},
        "shift_labels and labels": {"labels": ids, "shift_labels": shifted},
        "shift_labels alone": {"shift_labels": shifted},
    }[case]
    # GPT-2 computes a loss only when labels are given; with shift_labels their value does not matter.
    gpt2_inputs = {"labels": ids, **ours_inputs} if case == "shift_labels alone" else ours_inputs
    tiny_model.train()  # drop_rate is 0: train mode only makes the loss differentiable as in training
    gpt2 = to_gpt2(tiny_model).train()
    ours, ours_grad = loss_and_gradient(tiny_model, input_ids=ids, **ours_inputs)
    theirs, theirs_grad = loss_and_gradient(gpt2, input_ids=ids, **gpt2_inputs)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)


# --- PEFT ------------------------------------------------------------------------------------------------------------


def assert_trains(model: torch.nn.Module, ids: torch.Tensor, lr: float) -> None:
    """Five AdamW steps on the trainable parameters (the adapter's) lower the loss on `ids`."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


FEED_FORWARD_AND_ATTENTION = ["qkv", "out_proj", "ff.layers.0", "ff.layers.2"]


@pytest.mark.parametrize("target_modules", [FEED_FORWARD_AND_ATTENTION, "all-linear"], ids=["named", "all-linear"])
def test_lora_trains_saves_reloads_and_merges(tmp_path, target_modules):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    base = GPTScratchForCausalLM(tiny_config())
    base.save_pretrained(tmp_path / "base")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules, fan_in_fan_out=True)
    model = get_peft_model(base, config)
    adapted = sorted(
        name.removesuffix(".base_layer") for name, module in model.named_modules() if name.endswith(".base_layer")
    )
    # Every projection of every block, and nothing else (the output head stays whole, as PEFT does for GPT-2).
    expected = sorted(
        f"base_model.model.model.trf_blocks.{i}.{suffix}"
        for i in range(2)
        for suffix in ("att.qkv", "att.out_proj", "ff.layers.0", "ff.layers.2")
    )
    assert adapted == expected
    assert all("lora_" in name for name, parameter in model.named_parameters() if parameter.requires_grad)

    ids = random_ids(4, 16)
    assert_trains(model, ids, lr=1e-2)

    model.eval()
    with torch.no_grad():
        adapter_logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(
        GPTScratchForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapter_logits, rtol=0, atol=0)
        without_adapters = GPTScratchForCausalLM.from_pretrained(tmp_path / "base").eval()(ids).logits
        assert not torch.allclose(without_adapters, adapter_logits, atol=1e-3)  # the adapters did learn
        merged = reloaded.merge_and_unload()  # folds the adapters into the projections, in place
        assert type(merged) is GPTScratchForCausalLM
        assert not any("lora_" in name for name, _ in merged.named_parameters())
        torch.testing.assert_close(merged(ids).logits, adapter_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["prompt tuning", "prefix tuning"])
def test_prompt_learning_trains_and_gives_gpt2s_logits(method):
    """PEFT's prompt tuning (virtual token embeddings before the prompt's, through inputs_embeds) and prefix tuning
    (virtual keys and values in the cache) train on the model, and the trained adapter gives, on the same weights,
    the logits it gives on GPT2LMHeadModel. PEFT finds the width and heads under GPT-2's config names, which the
    model's config.json does not hold (it has the book's): they are given."""
    from peft import (
        PrefixTuningConfig,
        PromptTuningConfig,
        TaskType,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    kind = {"prompt tuning": PromptTuningConfig, "prefix tuning": PrefixTuningConfig}[method]

    def adapted(model):
        sizes = dict(num_virtual_tokens=4, token_dim=32, num_attention_heads=4, num_layers=2)
        return get_peft_model(model, kind(task_type=TaskType.CAUSAL_LM, **sizes))

    torch.manual_seed(0)
    base = GPTScratchForCausalLM(tiny_config())
    ours = adapted(base)
    ids = random_ids(4, 12)
    assert_trains(ours, ids, lr=0.1)

    theirs = adapted(to_gpt2(base))
    set_peft_model_state_dict(theirs, get_peft_model_state_dict(ours))
    with torch.no_grad():
        ours_logits, theirs_logits = (model.eval()(input_ids=ids).logits for model in (ours, theirs))
    assert ours_logits.shape == (4, 12 + 4 if method == "prompt tuning" else 12, 97)
    torch.testing.assert_close(ours_logits, theirs_logits, rtol=1e-5, atol=1e-5)


# --- packed sequences ------------------------------------------------------------------------------------------------


def test_packed_sequences_get_the_logits_they_get_alone(tiny_model):
    lengths = [(5, 7, 4), (9, 3, 4)]  # two rows of 16 tokens, three sequences each
    sequences = [
        [random_ids(1, n, seed=10 * row + k)[0] for k, n in enumerate(row_lengths)]
        for row, row_lengths in enumerate(lengths)
    ]
    packed = torch.stack([torch.cat(row) for row in sequences])
    position_ids = torch.stack([torch.cat([torch.arange(len(s)) for s in row]) for row in sequences])
    with torch.no_grad():
        logits = tiny_model(packed, position_ids=position_ids).logits
        for row, row_sequences in enumerate(sequences):
            start = 0
            for sequence in row_sequences:
                alone = tiny_model(sequence[None]).logits[0]
                torch.testing.assert_close(logits[row, start : start + len(sequence)], alone, rtol=1e-5, atol=1e-5)
                start += len(sequence)
        # Positions that run on are one sequence: the plain causal result.
        torch.testing.assert_close(
            tiny_model(packed, position_ids=torch.arange(16)[None]).logits, tiny_model(packed).logits, rtol=0, atol=0
        )


def test_the_flattening_collators_batch_gives_each_sequences_own_loss(tiny_model):
    from transformers import DataCollatorWithFlattening

    sequences = [random_ids(1, n, seed=n)[0].tolist() for n in (6, 9, 5)]
    batch = DataCollatorWithFlattening()([{"input_ids": ids} for ids in sequences])
    with torch.no_grad():
        packed_loss = tiny_model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]
        ).loss
        # Each sequence alone: summed token losses over all predicted tokens.
        total = sum(
            tiny_model(torch.tensor([ids]), labels=torch.tensor([ids])).loss * (len(ids) - 1) for ids in sequences
        )
    torch.testing.assert_close(packed_loss, total / sum(len(ids) - 1 for ids in sequences), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_trl_sft_trainer_trains_with_packing(tmp_path):
    from conftest import byte_level_tokenizer
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = byte_level_tokenizer(vocab_size=300)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(
        tiny_config(vocab_size=len(tokenizer), context_length=64, eos_token_id=tokenizer.eos_token_id)
    )
    texts = ["the cat sat on the mat", "a mat", "the cat", "on the mat the cat sat", "sat"] * 8
    checked = []

    def each_packed_sequence_alone(module, args, kwargs, output):
        """In every training batch, each packed sequence gets the hidden states it gets alone. (TRL runs the
        backbone, `model.model`, and scores the tokens through the head itself, without logits.)"""
        if checked and checked[-1] is None:  # the calls below, made from inside this hook
            return
        position_ids = kwargs.get("position_ids")
        assert position_ids is not None and kwargs.get("attention_mask") is None  # padding-free packing
        starts = [i for i in range(position_ids.shape[1]) if position_ids[0, i] == 0] + [position_ids.shape[1]]
        assert len(starts) > 2  # several sequences in the row
        checked.append(None)
        with torch.no_grad():
            for start, end in zip(starts, starts[1:]):
                alone = module(kwargs["input_ids"][:1, start:end], use_cache=False).last_hidden_state[0]
                torch.testing.assert_close(output.last_hidden_state[0, start:end].detach(), alone, rtol=1e-5, atol=1e-5)
        checked[-1] = len(starts) - 1

    hook = model.model.register_forward_hook(each_packed_sequence_alone, with_kwargs=True)
    before = model.model.tok_emb.weight.detach().clone()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path),
            packing=True,
            max_length=64,
            per_device_train_batch_size=1,
            max_steps=3,
            learning_rate=1e-3,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            bf16=False,
            dataset_text_field="text",
            logging_steps=1,
        ),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
    )
    try:
        result = trainer.train()
    finally:
        hook.remove()
    assert len(checked) == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.model.tok_emb.weight)


# --- torch.compile ---------------------------------------------------------------------------------------------------


def compiled_cases(model: GPTScratchForCausalLM):
    """(name, function, arguments) for the forward without and with padding, a training step's loss, and a decoding
    step against a prefilled StaticCache and DynamicCache. Each call gets fresh caches (they are mutated)."""
    ids = random_ids(2, 7)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    step = random_ids(2, 1, seed=2)
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)

    def prefilled(cache):
        with torch.no_grad():
            model(ids, attention_mask=mask, cache=cache)
        return cache

    return [
        ("forward", lambda: model(ids).logits),
        ("forward with padding", lambda: model(ids, attention_mask=mask).logits),
        ("training step", lambda: model(ids, labels=ids, use_cache=False).loss),
        (
            "decode step, static cache",
            lambda: (lambda cache: model(step, attention_mask=step_mask, cache=cache).logits)(
                prefilled(StaticCache(config=model.config, max_cache_len=16))
            ),
        ),
        (
            "decode step, dynamic cache",
            lambda: (lambda cache: model(step, attention_mask=step_mask, cache=cache).logits)(
                prefilled(DynamicCache(config=model.config))
            ),
        ),
    ]


def test_torch_compile_finds_no_graph_break():
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config(drop_rate=0.0))
    for name, case in compiled_cases(model):
        model.train(name == "training step")
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(case)()
        assert explanation.graph_break_count == 0, (name, explanation.break_reasons)


@pytest.mark.slow
def test_fullgraph_compiled_outputs_and_gradients_equal_eager():
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config(drop_rate=0.0))
    for name, case in compiled_cases(model):
        model.train(name == "training step")
        eager = case()
        torch._dynamo.reset()
        compiled_forward = model.forward
        # Inductor's code generation takes ~15 s a graph on 2 cores: it compiles the two graphs training runs; the
        # decoding steps go through AOTAutograd without code generation (the same traced graph, run eagerly).
        backend = "inductor" if name in ("forward with padding", "training step") else "aot_eager"
        model.forward = torch.compile(compiled_forward, fullgraph=True, backend=backend)
        try:
            compiled = case()
        finally:
            model.forward = compiled_forward
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5, msg=name)
        if name == "training step":
            model.zero_grad()
            eager.backward()
            eager_grads = [p.grad.clone() for p in model.parameters()]
            model.zero_grad()
            compiled.backward()
            for grad, parameter in zip(eager_grads, model.parameters()):
                torch.testing.assert_close(parameter.grad, grad, rtol=1e-4, atol=1e-6)
