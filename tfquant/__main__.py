"""`python -m tfquant` is the `tfquant` command."""

from .cli import run

run()
