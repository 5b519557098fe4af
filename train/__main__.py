"""`python -m train`: the same as `gptscratch-train`."""

from train.cli import main

main()
