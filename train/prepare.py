"""`gptscratch-prepare` (also `python -m train.prepare`): tokenise a corpus once into cached token files.

It takes gptscratch-train's data flags that decide the tokens (`train.options.CORPUS_FIELDS`) and prepares exactly
what a run with the same flags reads: the tokenizer (`--tokenizer train` fits it) and the training and validation
token files. It prints where they are and how big; every later run and process with those data flags (and
`--cache-dir`) maps them and starts training in seconds. Python: `train.data.prepare_tokens(...)`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from common.commands import ArgumentParser, run_command
from common.files import format_size
from train.cli import DefaultsFormatter, add_field_flags, flag_values
from train.options import CORPUS_FIELDS, DataOptions, check_fields

PROG = "gptscratch-prepare"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Tokenise a corpus once into cached token files (flat uint16 or uint32 token IDs that every run "
        "memory-maps). It takes gptscratch-train's data flags; a run with the same ones then starts at once.",
        formatter_class=DefaultsFormatter,
    )
    add_field_flags(parser, CORPUS_FIELDS)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv`, prepares the tokens, prints where they are; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    fields = DataOptions(**flag_values(args)).corpus_fields()
    check_fields(fields)
    from train.data import prepare_tokens  # torch and transformers load once the flags are good

    start = time.perf_counter()
    prepared = prepare_tokens(**fields, log=print)
    files, meta = prepared.files, prepared.files.meta
    what = "prepared" if files.made else "found prepared"
    print(
        f"{what} in {time.perf_counter() - start:.1f} s: {meta['tokens']['train']:,} training and "
        f"{meta['tokens']['val']:,} validation tokens"
    )
    print(f"token files  {files.directory} ({format_size(files.size)}: train.bin, val.bin, {meta['dtype']})")
    dropped = f", {meta['duplicates_dropped']:,} duplicates dropped" if fields["dedup"] else ""
    print(f"data         {prepared.source}; {meta['documents']:,} documents{dropped}")
    print(f"tokenizer    {prepared.tokenizer_description}")
    print("gptscratch-train with the same data flags reads them")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: bad input is one line on stderr and exit status 2."""
    run_command(PROG, lambda: run(argv))


if __name__ == "__main__":
    main()
