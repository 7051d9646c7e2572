"""`python -m tfquant` is the `tfquant` command."""

from .cli import run

if __name__ == "__main__":
    run()
