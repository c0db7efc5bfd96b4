"""`python -m stream` is the `segmenter` command."""

from stream.cli import main

main()
