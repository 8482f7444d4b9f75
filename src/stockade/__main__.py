"""`python -m stockade` runs the CLI."""

from stockade.cli import main

main()
