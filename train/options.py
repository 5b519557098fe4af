"""A training run's options with their defaults (the flags of `gptscratch-train`), and the error that ends a run
whose loss diverged. Standard library only, so the command checks its arguments before importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ENGINES = ("accelerate", "trainer")
LR_SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainOptions:
    """Everything a run needs; `gptscratch-train` fills it from its flags (same names, dashes for underscores)."""

    output_dir: str
    # Data
    data: list[str] | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_column: str = "text"
    embedded: str = "pydoc"
    dedup: bool = False
    tokenizer: str = "train"
    vocab_size: int = 4096
    train_ratio: float = 0.9
    context_length: int | None = None  # window length; None: the model's context_length
    document_mask: bool = False  # attention stays inside each <|endoftext|>-separated document of a window
    stride: int | None = None  # None: the window length (windows do not overlap)
    num_proc: int | None = None
    cache_dir: str | None = None
    # Model
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    dropout: float | None = None
    # Optimisation
    engine: str = "accelerate"
    epochs: int = 6
    max_steps: int | None = None
    batch_size: int = 4
    lr: float = 4e-4
    weight_decay: float = 0.1
    warmup_steps: int = 20
    lr_scheduler: str = "constant"
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 123
    compile: bool = False
    # Evaluation and samples
    eval_freq: int = 50
    eval_iter: int = 5
    start_context: str | None = None
    temperature: float = 0.8
    top_k: int | None = 40
    max_new_tokens: int = 50
    early_stopping_patience: int | None = None
    # Checkpoints and outputs
    save_steps: int | None = 100
    save_total_limit: int = 2
    resume: str | None = None  # "latest" (the newest checkpoint in output_dir) or a checkpoint directory
    overwrite: bool = False
    report_to: list[str] = field(default_factory=list)
    dry_run: bool = False


# Options that shape the run's numbers: a resumed run must use the same ones to continue exactly.
RESUME_MUST_MATCH = (
    "data", "dataset", "dataset_config", "dataset_split", "text_column", "embedded", "dedup", "tokenizer",
    "vocab_size", "train_ratio", "context_length", "document_mask", "stride", "preset", "model_overrides", "dropout", "engine",
    "batch_size", "lr", "weight_decay", "warmup_steps", "lr_scheduler", "grad_accum", "max_grad_norm",
    "mixed_precision", "seed", "compile",
)


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the message names the step and the last good checkpoint."""
