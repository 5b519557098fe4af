"""`python -m convert`: the same command as `gptscratch-convert`."""

from convert.cli import main

main()
