"""What every gptscratch command shares, whichever package it lives in (`train`, `convert`):

- `common.commands`: bad input as one line on stderr with exit status 2 (`UsageError`, `run_command`), and the
  argument parser that reports that way.
- `common.files`: users' files read with errors that name them; outputs written atomically (files and directories).
- `common.model_dir`: the one model directory format, written and read back with clear errors.
- `common.tokenizer`: GPT-2's tokenizer from a directory or the Hugging Face Hub (which is probed before it is asked).

`commands` and `files` import only the standard library, so a command refuses bad input before it imports torch.
"""
