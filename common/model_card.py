"""The model card (README.md) of a model directory, written by a training run and by `gptscratch-push` for each
format it publishes: what the model is, how it was trained and what it scored, as far as the directory records it,
and how to load it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from modeling_gptscratch import GPTScratchForCausalLM


def _cell(value: Any, digits: int = 4) -> str:
    """A value for a Markdown table cell: thousands separators for counts, `digits` decimals for losses."""
    if value is None:
        return "not recorded"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


# What a model card says of each format: the Hub's library and tags, how the model is published, its architecture
# and file, and how to use it (`{path}` filled in, and `{where}` with where that path is).
_TRANSFORMERS_USE = """from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

path = "{path}"{where}
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path{trust})
generator = pipeline("text-generation", model=path{trust})
print(generator("Every effort moves you", max_new_tokens=20)[0]["generated_text"])"""
_CARDS: dict[str, dict[str, Any]] = {
    "gptscratch": dict(
        library="transformers",
        tags=["safetensors"],
        published="in its own format: loading it runs the `modeling_gptscratch.py` shipped here "
        "(`trust_remote_code=True`).",
        architecture="GPTScratchForCausalLM",
        file="safetensors",
        use=_TRANSFORMERS_USE.replace("{trust}", ", trust_remote_code=True"),
    ),
    "gpt2": dict(
        library="transformers",
        tags=["safetensors"],
        published="as a plain transformers `GPT2LMHeadModel`: it loads without remote code wherever GPT-2 runs.",
        architecture="GPT2LMHeadModel",
        file="safetensors",
        use=_TRANSFORMERS_USE.replace("{trust}", ""),
    ),
    "gguf": dict(
        library="gguf",
        tags=["gguf"],
        published="as one GGUF file, `model.gguf` (GPT-2's architecture, tokenizer included): it runs in "
        "llama.cpp and every program built on it, and loads in transformers.",
        architecture="GPT-2 (GGUF architecture `gpt2`)",
        file="GGUF",
        language="bash",
        use="""llama-cli -m model.gguf -p "Every effort moves you" -n 20           # llama.cpp
python -c 'from llama_cpp import Llama; print(Llama("model.gguf")("Every effort moves you", max_tokens=20))'
python -c 'from transformers import AutoModelForCausalLM as M; M.from_pretrained(".", gguf_file="model.gguf")'""",
    ),
    "onnx": dict(
        library="onnx",
        tags=["onnx"],
        published="as an ONNX model with its KV cache as inputs and outputs, `model.onnx`, for ONNX Runtime; the "
        "tokenizer files beside it.",
        architecture="GPTScratchForCausalLM, traced to ONNX",
        file="ONNX",
        use="""import numpy as np, onnxruntime
from transformers import AutoTokenizer

tokenizer, session = AutoTokenizer.from_pretrained("."), onnxruntime.InferenceSession("model.onnx")
ids = tokenizer("Every effort moves you", return_tensors="np")["input_ids"]
past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in session.get_inputs()[3:]}
logits, *present = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                      "position_ids": np.arange(ids.shape[1])[None], **past})
# Next step: the chosen token, the mask one longer, its position, and `present` as the past (in input order).""",
    ),
}


def model_card(
    title: str,
    model: GPTScratchForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    summary: dict[str, Any] | None,
    has_loss_plot: bool,
    format: str = "gptscratch",
    license: str = "apache-2.0",
    repo_id: str | None = None,
) -> str:
    """README.md for a model directory (`title` its name) or, with `repo_id`, a repository of a local hub: YAML
    metadata, then what the model is, how it was trained (what is known: the model it started from, the data, the
    final figures and benchmark scores), how to load it and, in a repository, how to reach earlier versions."""
    config = model.config
    remote_code = format == "gptscratch"
    tags = ["gptscratch", "gpt2", "causal-lm", "text-generation", *_CARDS[format]["tags"]]
    if remote_code:
        tags.append("custom_code")  # the Hub's tag for models that load with trust_remote_code=True
    lines = [
        "---",
        f"library_name: {_CARDS[format]['library']}",
        "pipeline_tag: text-generation",
        f"license: {license}",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "---",
        "",
        f"# {title}",
        "",
        'A GPT-2-style decoder-only language model built with gptscratch ("Build a Large Language Model (From '
        "Scratch)\", chapters 4 and 5, behind Hugging Face's interfaces), published " + _CARDS[format]["published"],
        "",
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| Architecture | {_CARDS[format]['architecture']} |",
        f"| Parameters | {model.num_parameters():,} |",
        f"| Layers / heads / embedding size | {config.n_layers} / {config.n_heads} / {config.emb_dim} |",
        f"| Context length | {config.context_length} tokens |",
        f"| Vocabulary | {config.vocab_size:,} tokens |",
        f"| Output head | {'tied to the token embedding' if config.tie_word_embeddings else 'separate'} |",
        f"| Weights | {str(model.dtype).removeprefix('torch.')}, {_CARDS[format]['file']} |",
        f"| Tokenizer | {type(tokenizer).__name__}, {len(tokenizer):,} tokens |",
        "",
        "## Training",
        "",
    ]
    if summary is None:
        lines += [
            "No training record came with this model (the directory held no `training_summary.json`): it was "
            "converted from a checkpoint, such as OpenAI's GPT-2 weights, rather than trained by gptscratch. Its "
            "training data, steps and losses are therefore not known here; the architecture and tokenizer above are."
        ]
    else:
        lines += [
            "| | |",
            "| --- | --- |",
            *([f"| Started from | {_cell(summary['init_from'])} |"] if summary.get("init_from") else []),
            f"| Trained on | {_cell(summary.get('source'))} |",
            f"| Tokenizer | {_cell(summary.get('tokenizer'))} |",
            f"| Steps | {_cell(summary.get('steps'))} |",
            f"| Epochs | {_cell(summary.get('epochs'))} |",
            f"| Tokens seen | {_cell(summary.get('tokens_seen'))} |",
            f"| Final training loss | {_cell(summary.get('train_loss'))} |",
            f"| Final training perplexity | {_cell(summary.get('train_perplexity'), 2)} |",
            f"| Final validation loss | {_cell(summary.get('val_loss'))} |",
            f"| Final validation perplexity | {_cell(summary.get('val_perplexity'), 2)} |",
            "",
            "Losses are mean cross-entropy per token in nats; perplexity is exp(loss). `metrics.jsonl` holds every "
            "evaluation of the run.",
        ]
    scores = (summary or {}).get("task_scores")
    if scores:
        lines += [
            "",
            "## Benchmarks",
            "",
            f"lm-eval's scores at step {scores['step']}, the last evaluation that ran the tasks "
            "(`training_summary.json` and `metrics.jsonl` keep them):",
            "",
            "| Task | Metric | Value |",
            "| --- | --- | --- |",
            *(
                f"| {name.split('/', 1)[0]} | {name.split('/', 1)[1]} | {_cell(value)} |"
                for name, value in scores.items()
                if name != "step"
            ),
        ]
    if has_loss_plot:
        lines += ["", "![Training and validation loss against epochs and tokens seen](loss_plot.png)"]
    where = "  # from a local hub directory: the path of this folder, HUB_DIR/" + repo_id if repo_id else ""
    lines += [
        "",
        "## Use",
        "",
        f"```{_CARDS[format].get('language', 'python')}",
        *_CARDS[format]["use"].replace("{path}", repo_id or ".").replace("{where}", where).splitlines(),
        "```",
        "",
    ]
    if repo_id is not None:
        lines += [
            "## Versions",
            "",
            "Each push is one git commit of this folder: `git log` lists the versions, `git show <commit>:config.json` "
            "prints a file as that version had it, and `git clone <this folder> <a folder outside the hub>` followed "
            "by `git checkout <commit>` there gives a whole earlier version without touching this one.",
            "",
        ]
    return "\n".join(lines)
