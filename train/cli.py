"""`gptscratch-train`: pretrain a GPTScratch model on unlabeled text. Parses flags, calls `train.run.train`, prints.

The flags come from `train.options` (standard library only), so bad arguments are refused before torch is
imported; `train.run` and what it brings are imported once the arguments are good.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from common.commands import print_error, run_command
from train.options import PROGRAM, parse_arguments


def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv`, trains, prints the outcome; returns the exit status (128 + signal number when stopped, 1 when
    the loss diverged)."""
    options = parse_arguments(argv)
    # Imported once the arguments are good: torch, transformers and datasets take seconds to load.
    from accelerate import PartialState

    from train.run import train, verify_model_directory
    from train.state import TrainingDiverged

    try:
        result = train(options)
    except TrainingDiverged as error:
        print_error(f"{PROGRAM}: stopped: {error}")
        return 1
    if result is None:
        return 0
    if not PartialState().is_main_process:
        return 0
    if result.already_finished:
        further = "--early-stopping-patience" if result.reason == "early-stopped" else "--max-steps or --epochs"
        print(
            f"nothing to do: the run in {result.output_dir} already finished at step {result.steps} "
            f"({result.reason}) and its model directory is complete; raise {further} to train further"
        )
        return 0
    if result.reason == "interrupted":
        name = signal.Signals(result.signal_number).name if result.signal_number else "a stop request"
        print(
            f"stopped by {name} at step {result.steps}; checkpoint {result.last_checkpoint}. "
            f"Continue with the same command and --resume"
        )
        return 128 + (result.signal_number or 0)
    first, last = result.metrics[0], result.summary
    print(
        f"done ({result.reason}): {result.steps} steps, {result.epochs:.2f} epochs, {result.tokens_seen:,} tokens; "
        f"val loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}, "
        f"val perplexity {first['val_perplexity']:.1f} -> {last['val_perplexity']:.1f}"
    )
    print(f"model directory: {result.output_dir} (metrics.jsonl, loss_plot.png, loss_plot.pdf, training_summary.json)")
    text = verify_model_directory(
        result.output_dir,
        result.start_context,
        options.max_new_tokens,
        options.temperature,
        options.top_k,
        options.seed,
    )
    print(f"reloaded with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True): {text!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: bad input is one line on stderr and exit status 2."""
    run_command(PROGRAM, lambda: run(argv))


if __name__ == "__main__":
    main()
