"""GPTScratch: a GPT-2-style language model written from scratch as a Hugging Face model.

The whole model reads top-down: configuration, attention, feed-forward, block, base model, language-model head,
`generate`, tokenizer helpers, Auto-class registration. It follows chapter 4 and 5 of "Build a Large Language
Model (From Scratch)" (token + position embeddings, pre-LayerNorm blocks, tied output head) behind transformers'
interfaces (`PreTrainedModel`, `Cache`, `GenerationMixin`, `AutoModelForCausalLM`).

This file imports only torch, transformers and the standard library: `save_pretrained` copies it into every
model directory, and `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads it from there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    GPT2Tokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, StaticCache
from transformers.generation.continuous_batching import PagedAttentionCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward
from transformers.pytorch_utils import Conv1D
from transformers.utils import can_return_tuple

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_TOKEN_ID = 50256  # <|endoftext|>

# transformers 5.24 renamed the KV cache, as a forward argument and as an output field, from `past_key_values` to
# `cache`. The model reads and returns it under the installed version's name, so GenerationMixin finds it again at
# the next step, and takes the other name too (older callers).
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
LEGACY_CACHE_NAME = "past_key_values"

# Model sizes by name. The GPT-2 sizes are OpenAI's; "tiny" trains in minutes on a laptop CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(context_length=256, emb_dim=128, n_heads=4, n_layers=4, qkv_bias=False),
    "gpt2-124m": dict(context_length=1024, emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True),
    "gpt2-355m": dict(context_length=1024, emb_dim=1024, n_heads=16, n_layers=24, qkv_bias=True),
    "gpt2-774m": dict(context_length=1024, emb_dim=1280, n_heads=20, n_layers=36, qkv_bias=True),
    "gpt2-1558m": dict(context_length=1024, emb_dim=1600, n_heads=25, n_layers=48, qkv_bias=True),
}


class GPTScratchConfig(PretrainedConfig):
    """Configuration of a GPTScratch model.

    Takes the book's keys, so `GPTScratchConfig(**GPT_CONFIG_124M)` works with the book's dict, and answers
    transformers' standard names (`hidden_size`, `num_hidden_layers`, `num_attention_heads`,
    `max_position_embeddings`) through `attribute_map`.

    `drop_rate` is the book's dropout: after the embeddings, on each residual branch and, unless
    `attention_dropout` says otherwise, on the attention weights. `attention_dropout` (None: `drop_rate`) sets the
    last one alone: at 0, `scaled_dot_product_attention` keeps its fused kernels, which dropout inside attention
    makes it leave on CPU (benchmarks/RESULTS.md gives what that costs a training step).
    """

    model_type = "gptscratch"
    keys_to_ignore_at_inference = [CACHE_NAME]
    attribute_map = {
        "hidden_size": "emb_dim",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "context_length",
    }

    vocab_size: int = GPT2_VOCAB_SIZE
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    attention_dropout: float | None = None
    qkv_bias: bool = False
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = GPT2_EOS_TOKEN_ID
    eos_token_id: int | list[int] | None = GPT2_EOS_TOKEN_ID
    pad_token_id: int | None = None
    auto_map: dict[str, str] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        for field in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTScratchConfig: {field} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads:
            raise ValueError(
                f"GPTScratchConfig: emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}); "
                f"choose an n_heads that divides {self.emb_dim}"
            )
        rates = {"drop_rate": self.drop_rate}
        if self.attention_dropout is not None:
            rates["attention_dropout"] = self.attention_dropout
        for field, value in rates.items():
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"GPTScratchConfig: {field} must be in [0, 1), got {value!r}")
        if self.auto_map is None:
            # Lets the Auto classes find this file's classes in every saved directory (trust_remote_code=True).
            self.auto_map = {
                "AutoConfig": "modeling_gptscratch.GPTScratchConfig",
                "AutoModel": "modeling_gptscratch.GPTScratchModel",
                "AutoModelForCausalLM": "modeling_gptscratch.GPTScratchForCausalLM",
            }

    @property
    def attention_dropout_rate(self) -> float:
        """The dropout on the attention weights: `attention_dropout`, or the book's `drop_rate` when it is unset."""
        return self.drop_rate if self.attention_dropout is None else self.attention_dropout

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTScratchConfig:
        """A config by size name (`tiny`, `gpt2-124m`, `gpt2-355m`, `gpt2-774m`, `gpt2-1558m`), any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


class Projection(Conv1D):
    """transformers' `Conv1D`, GPT-2's linear layer (weight [in, out]; nn.Linear stores [out, in]), bias optional.

    A one-token decoding step is a vector-matrix product that streams every weight from memory; on CPU this layout
    streams faster than nn.Linear's on a CPU (benchmarks/RESULTS.md), and the math is the same. Being a Conv1D,
    it is a layer PEFT knows: LoRA adapters go on it (`target_modules=["qkv", "out_proj"]` or `"all-linear"`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(nf=out_features, nx=in_features)
        if not bias:
            del self.bias
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        if self.bias is not None:
            return super().forward(x)
        return (x.reshape(-1, self.nx) @ self.weight).view(*x.shape[:-1], self.nf)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (the book's `MultiHeadAttention`) with fused q/k/v and a KV cache. The
    attention itself is the function transformers' attention interface names by `config._attn_implementation`:
    "sdpa" (the default), "eager" (GPT-2's, the one that returns the weights), "flex_attention", flash attention
    where installed, and what continuous batching switches to ("paged|eager"), as transformers' GPT-2 calls them."""

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.config = config  # the attention functions read it (flash attention) and pick by its implementation
        self.n_heads = config.n_heads
        self.head_dim = config.emb_dim // config.n_heads
        self.scaling = self.head_dim**-0.5
        self.layer_idx = layer_idx
        self.is_causal = True
        self.dropout = config.attention_dropout_rate
        # One matmul for queries, keys and values: weight [emb, 3 * emb], the book's W_query, W_key, W_value
        # (transposed) side by side.
        self.qkv = Projection(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.out_proj = Projection(config.emb_dim, config.emb_dim)
        self.out_proj.is_residual_projection = True

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: Any,
        cache: Cache | PagedAttentionCache | None = None,
        kv_length: int | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [batch, tokens, emb_dim] -> ([batch, tokens, emb_dim], the attention weights or None). attention_mask:
        what `create_causal_mask` made for the implementation in use. kv_length: the keys to attend to when the cache
        hands back more (a StaticCache's filled part), or None. kwargs go to the cache and the attention function
        (continuous batching's indices and sequence lengths travel there)."""
        batch, tokens, emb_dim = x.shape
        # [batch, tokens, 3 * emb_dim] -> 3 x [batch, n_heads, tokens, head_dim]
        queries, keys, values = (
            self.qkv(x).view(batch, tokens, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        )
        implementation = self.config._attn_implementation
        if CACHE_NAME != "cache" and implementation.startswith("paged|"):
            # Before 5.24 (which renamed the cache) a paged attention function writes the paged cache itself.
            kwargs["cache"], cache = cache, None
        if cache is not None:
            keys, values = cache.update(keys, values, self.layer_idx, kwargs=kwargs)
            if kv_length is not None:  # a view, no copy
                keys, values = keys[:, :, :kv_length], values[:, :, :kv_length]
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        # On CPU, SDPA's bf16 kernel is several times slower than fp32's for one query against a long cache,
        # conversion included (benchmarks/RESULTS.md): a decoding step attends in fp32.
        upcast = tokens == 1 and x.device.type == "cpu" and queries.dtype == torch.bfloat16 and implementation == "sdpa"
        with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():
            context, weights = attention(
                self,
                *((tensor.float() if upcast else tensor) for tensor in (queries, keys, values)),
                attention_mask,
                dropout=self.dropout if self.training else 0.0,
                scaling=self.scaling,
                **kwargs,
            )
        # [batch, tokens, n_heads, head_dim] -> [batch, tokens, emb_dim]
        context = context.to(queries.dtype).reshape(batch, tokens, emb_dim)
        return self.out_proj(context), weights


class FeedForward(nn.Module):
    """Position-wise feed-forward: expand 4x, GPT-2's tanh-approximated GELU, project back."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__()
        self.layers = nn.Sequential(
            Projection(config.emb_dim, 4 * config.emb_dim),
            nn.GELU(approximate="tanh"),
            Projection(4 * config.emb_dim, config.emb_dim),
        )
        self.layers[2].is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm block: x + attention(norm1(x)), then x + feed_forward(norm2(x))."""

    def __init__(self, config: GPTScratchConfig, layer_idx: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.att = CausalSelfAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.ff = FeedForward(config)
        self.drop_resid = nn.Dropout(config.drop_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Any = None,
        cache: Cache | PagedAttentionCache | None = None,
        kv_length: int | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states: [batch, tokens, emb_dim] -> ([batch, tokens, emb_dim], the attention weights or None)."""
        attended, weights = self.att(self.norm1(hidden_states), attention_mask, cache, kv_length, **kwargs)
        hidden_states = hidden_states + self.drop_resid(attended)
        return hidden_states + self.drop_resid(self.ff(self.norm2(hidden_states))), weights


class GPTScratchPreTrainedModel(PreTrainedModel):
    config_class = GPTScratchConfig
    config: GPTScratchConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = [CACHE_NAME]
    # The attention implementations it takes (CausalSelfAttention), as transformers' GPT-2 declares them.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's initialisation: normal(0, 0.02); residual output projections scaled by 1/sqrt(2 * n_layers)."""
        super()._init_weights(module)
        if isinstance(module, Projection):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        # The flag sits on the projection itself: transformers skips custom modules holding no parameters directly.
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / (2 * self.config.n_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)


class GPTScratchModel(GPTScratchPreTrainedModel):
    """Token + position embeddings, dropout, the transformer blocks and the final LayerNorm: hidden states out."""

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.tok_emb = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | PagedAttentionCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """input_ids: [batch, tokens], or inputs_embeds: [batch, tokens, emb_dim] -> last_hidden_state: [batch,
        tokens, emb_dim]. attention_mask: [batch, past + tokens] with 0 at padding (a 4D mask is used as it is);
        position_ids: [batch or 1, tokens], by default counted from each row's first real token, so a left-padded row
        sees the positions it sees alone. Without a mask and a past, position_ids that restart mark packed sequences,
        each attending only within itself. cache: the KV cache (`past_key_values` before transformers 5.24; either name
        works), continuous batching's PagedAttentionCache too. output_attentions: needs attn_implementation="eager".
        """
        cache = _cache_argument(cache, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass either input_ids [batch, tokens] or inputs_embeds [batch, tokens, emb_dim]")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError("input_ids must be a [batch, tokens] tensor of token IDs")
        if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.emb_dim):
            raise ValueError(f"inputs_embeds must be a [batch, tokens, {self.config.emb_dim}] tensor")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions needs attn_implementation='eager' ({self.config._attn_implementation!r} computes "
                "no weights): load the model with it or call model.set_attn_implementation('eager')"
            )
        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)
        batch, tokens = inputs_embeds.shape[:2]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        # Continuous batching's paged cache holds many sequences: their positions come with the batch, its mask too.
        paged = isinstance(cache, PagedAttentionCache)
        past_length = cache.get_seq_length() if cache is not None and not paged else 0
        # A preallocated cache (StaticCache) hands back its whole buffer: eager runs attend to its filled part,
        # compiled ones (which cannot read its count, a tensor) to all of it, the unfilled part masked.
        static, kv_length = isinstance(cache, Cache) and cache.is_compileable, None
        if static and not torch.compiler.is_compiling():
            past_length = int(past_length)
            kv_length = past_length + tokens
        if isinstance(past_length, int) and not paged:
            if past_length + tokens > self.config.context_length:
                raise ValueError(
                    f"the sequence has {past_length + tokens} tokens but the model's context_length is "
                    f"{self.config.context_length}; crop the input to its last {self.config.context_length} tokens"
                )
            expected = (batch, past_length + tokens)
            if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape != expected:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {expected} (one entry per "
                    "cached and new token)"
                )
        # transformers' mask for the implementation in use: None where SDPA's causal path does, padding and packed
        # sequences (restarting position_ids, seen without a past) hidden. A fresh dynamic cache is left out, or
        # transformers would not look for packed sequences in it.
        fresh = not static and not paged and isinstance(past_length, int) and past_length == 0
        mask = create_causal_mask(self.config, inputs_embeds, attention_mask, None if fresh else cache, position_ids)
        if kv_length is not None:
            if torch.is_tensor(mask):
                mask = mask[..., :kv_length]
            elif mask is not None:  # flex attention's BlockMask covers the whole buffer
                kv_length = None
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -tokens:]
            else:
                position_ids = (torch.arange(tokens, device=inputs_embeds.device) + past_length)[None]

        hidden_states = self.drop_emb(inputs_embeds + self.pos_emb(position_ids))
        # As GPT-2: the input of every block, then the final normalised output (n_layers + 1 entries).
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.trf_blocks:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = block(
                hidden_states, mask, cache=cache, kv_length=kv_length, position_ids=position_ids, **kwargs
            )
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.final_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_NAME: cache if use_cache else None},
        )


def _cache_argument(cache: Cache | None, kwargs: dict[str, Any]) -> Cache | None:
    """The KV cache a caller passed, under transformers' current name (`cache`) or the one before 5.24, which is
    taken out of `kwargs`."""
    legacy = kwargs.pop(LEGACY_CACHE_NAME, None)
    if cache is not None and legacy is not None:
        raise ValueError(f"pass the KV cache once: as cache or as {LEGACY_CACHE_NAME}, not both")
    return cache if cache is not None else legacy


def decoding_args_problem(
    max_new_tokens: int | None, temperature: float | None, top_k: int | None
) -> tuple[str, str] | None:
    """The first decoding argument out of range, as (its name, what it must be), or None: max_new_tokens >= 0,
    temperature a finite number >= 0 (0 is greedy), top_k >= 1 (None: unset)."""
    if max_new_tokens is not None and max_new_tokens < 0:
        return "max_new_tokens", f"must be >= 0, got {max_new_tokens}"
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        return "temperature", f"must be a finite number >= 0 (0 is greedy decoding), got {temperature}"
    if top_k is not None and top_k < 1:
        return "top_k", f"must be >= 1 (or unset to keep every token), got {top_k}"
    return None


class GPTScratchForCausalLM(GPTScratchPreTrainedModel, GenerationMixin):
    """GPTScratchModel plus the output head (tied to the token embedding unless `tie_word_embeddings=False`)."""

    _tied_weights_keys = {"out_head.weight": "model.tok_emb.weight"}

    def __init__(self, config: GPTScratchConfig):
        super().__init__(config)
        self.model = GPTScratchModel(config)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.out_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.out_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | PagedAttentionCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """input_ids: [batch, tokens] (or inputs_embeds) -> logits: [batch, tokens, vocab_size] (the last
        `logits_to_keep` if set). The other arguments are GPTScratchModel.forward's.

        labels: [batch, tokens], usually the input_ids themselves; they are shifted inside (position t predicts
        token t + 1) and -100 is ignored. `shift_labels` gives targets already shifted instead (and wins over
        labels, as in transformers' models). The loss is the mean cross-entropy over predicted tokens, or, when the
        Trainer passes `num_items_in_batch` under gradient accumulation, the sum divided by that count.
        """
        cache = _cache_argument(cache, kwargs)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.out_head(hidden_states[:, keep])
        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
        )

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """GenerationMixin's hook for preallocated caches (`cache_implementation="static"`): this model takes the
        [batch, past + tokens] padding mask as it is and builds the attention mask in forward, where it also counts
        positions from it and attends to the cache's filled part only."""
        return attention_mask

    # Arguments the simple decoding loop below implements; any other goes to GenerationMixin.generate.
    _SIMPLE_GENERATE_ARGS = frozenset(
        {"max_new_tokens", "temperature", "top_k", "do_sample", "eos_token_id", "pad_token_id", "use_cache", "streamer"}
    )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor:
        """Decode up to `max_new_tokens` tokens after `input_ids` [batch, tokens]; returns [batch, tokens + new].

        The book's decoding: `temperature=0` is greedy argmax; above 0, tokens are sampled from
        softmax(logits / temperature); `top_k` keeps the k highest logits. A row that emits `eos_token_id` stops
        and is filled with `pad_token_id` while the others go on. Prompts longer than `context_length` are cropped
        to their last `context_length` tokens for the forward pass (the returned sequence keeps the whole prompt),
        and decoding goes on past the window. Keys and values are cached in a preallocated `StaticCache`, so each
        new token costs one token's forward pass while the window lasts; past it, every step re-reads the last
        `context_length` tokens.

        Unset arguments come from `model.generation_config` (greedy, 20 new tokens, eos 50256 by default;
        `eos_token_id=[]` decodes to the length limit). Sampling is reproducible with
        `generator=torch.Generator().manual_seed(s)` or `torch.manual_seed(s)`. A `streamer` (transformers'
        `TextStreamer`, batch 1) receives the prompt, then each new token as it is chosen, then `end()`.
        Any other option (num_beams, top_p, repetition_penalty, generation_config, inputs_embeds, ...) is handed to
        transformers' `GenerationMixin.generate`, which runs through this model's forward and KV cache within the
        window; so is every call once `prepare_inputs_for_generation` is replaced on the model (PEFT's prompt
        learning inserts its prompt there, and only GenerationMixin's loop calls it).
        """
        if kwargs.get("inputs_embeds") is None:
            if input_ids is None or input_ids.dim() != 2:
                raise ValueError("input_ids must be a [batch, tokens] tensor of token IDs")
            if input_ids.shape[1] == 0:
                raise ValueError("input_ids is empty: the prompt needs at least one token")
        temperature = kwargs.get("temperature")
        problem = decoding_args_problem(kwargs.get("max_new_tokens"), temperature, kwargs.get("top_k"))
        if problem is not None:
            raise ValueError(" ".join(problem))

        unhandled = {name for name, value in kwargs.items() if value is not None} - self._SIMPLE_GENERATE_ARGS
        if "prepare_inputs_for_generation" in vars(self):
            unhandled.add("prepare_inputs_for_generation")
        if unhandled:
            if generator is not None:
                raise ValueError(
                    f"generator works with the built-in decoding only, not with {sorted(unhandled)}; "
                    "seed with torch.manual_seed instead"
                )
            if temperature == 0:  # transformers spells greedy as do_sample=False
                kwargs.pop("temperature")
                kwargs.setdefault("do_sample", False)
            elif temperature is not None:
                kwargs.setdefault("do_sample", True)
            return super().generate(input_ids, attention_mask=attention_mask, **kwargs)
        return self._decode(input_ids, attention_mask, generator, **self._resolve_generation_args(**kwargs))

    def _resolve_generation_args(
        self,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        do_sample: bool | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        use_cache: bool | None = None,
        streamer: Any = None,
    ) -> dict[str, Any]:
        """Fills unset decoding arguments from `self.generation_config`."""
        defaults = self.generation_config
        if do_sample is None:
            do_sample = bool(defaults.do_sample) if temperature is None else temperature > 0
        if not do_sample:
            temperature = 0.0
        elif temperature is None:
            temperature = defaults.temperature if defaults.temperature is not None else 1.0
        if top_k is None and do_sample and temperature > 0:
            top_k = defaults.top_k or None
        if max_new_tokens is None:
            max_new_tokens = defaults.max_new_tokens if defaults.max_new_tokens is not None else 20
        if eos_token_id is None:
            eos_token_id = defaults.eos_token_id
        eos_token_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        if pad_token_id is None:
            pad_token_id = defaults.pad_token_id
        if pad_token_id is None:
            pad_token_id = eos_token_ids[0] if eos_token_ids else 0
        return dict(
            max_new_tokens=max_new_tokens,
            temperature=float(temperature),
            top_k=top_k,
            eos_token_ids=eos_token_ids,
            pad_token_id=pad_token_id,
            use_cache=use_cache is not False,
            streamer=streamer,
        )

    def _decode(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        generator: torch.Generator | None,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        eos_token_ids: list[int],
        pad_token_id: int,
        use_cache: bool,
        streamer: Any,
    ) -> torch.LongTensor:
        """The book's `generate` loop with a KV cache. Shapes: sequences and mask [batch, tokens so far]."""
        context_length = self.config.context_length
        sequences = input_ids
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        eos = torch.tensor(eos_token_ids, dtype=torch.long, device=input_ids.device)
        cache, cache_length, step_ids = None, 0, None
        # Preallocated keys and values: appending a token writes it in place instead of copying the whole cache.
        cache_size = min(context_length, input_ids.shape[1] + max_new_tokens)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        for _ in range(max_new_tokens):
            if not use_cache or cache is None or cache_length >= context_length:
                # (Re)start from the last context_length tokens: cached keys past the window would carry
                # positions the model does not have, so the cache starts over there, as the book's crop does.
                cache = StaticCache(config=self.config, max_cache_len=cache_size) if use_cache else None
                step_ids = sequences[:, -context_length:]
                window_mask = mask[:, -context_length:]
            else:
                window_mask = mask[:, -(cache_length + 1) :]
            outputs = self(step_ids, attention_mask=window_mask, cache=cache, use_cache=use_cache, logits_to_keep=1)
            cache_length = window_mask.shape[1]
            logits = outputs.logits[:, -1, :].float()  # [batch, vocab]
            if top_k is not None:
                kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth_largest, float("-inf"))
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                next_token = logits.argmax(dim=-1)
            next_token = torch.where(finished, torch.full_like(next_token, pad_token_id), next_token)
            sequences = torch.cat([sequences, next_token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(next_token)[:, None]], dim=1)
            step_ids = next_token[:, None]
            if streamer is not None:
                streamer.put(next_token.cpu())
            finished |= torch.isin(next_token, eos)
            if bool(finished.all()):
                break
        if streamer is not None:
            streamer.end()
        return sequences


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer: GPT-2's byte-level BPE through transformers' fast tokenizer, and the book's two helpers.


def gpt2_tokenizer_from_openai_files(directory: str | os.PathLike) -> GPT2Tokenizer:
    """GPT-2's tokenizer from OpenAI's `encoder.json` and `vocab.bpe` (as shipped beside every GPT-2 checkpoint)."""
    directory = Path(directory)
    with open(directory / "encoder.json", encoding="utf-8") as f:
        vocab = json.load(f)
    with open(directory / "vocab.bpe", encoding="utf-8") as f:
        # The first line is a version header ("#version: 0.2"), then one merge "left right" per line.
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def text_to_token_ids(text: str, tokenizer: Any) -> torch.Tensor:
    """The book's helper: text -> token IDs of shape [1, tokens] (HF tokenizers and tiktoken both work)."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: Any) -> str:
    """The book's helper: token IDs of shape [1, tokens] or [tokens] -> text."""
    return tokenizer.decode(token_ids.squeeze(0).tolist())


# ---------------------------------------------------------------------------------------------------------------------
# Auto classes: importing this file makes AutoConfig / AutoModel / AutoModelForCausalLM know "gptscratch", and
# save_pretrained copies this file beside the weights.

AutoConfig.register(GPTScratchConfig.model_type, GPTScratchConfig, exist_ok=True)
AutoModel.register(GPTScratchConfig, GPTScratchModel, exist_ok=True)
AutoModelForCausalLM.register(GPTScratchConfig, GPTScratchForCausalLM, exist_ok=True)
GPTScratchConfig.register_for_auto_class()
GPTScratchModel.register_for_auto_class("AutoModel")
GPTScratchForCausalLM.register_for_auto_class("AutoModelForCausalLM")
