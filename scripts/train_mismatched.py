"""Train the model that full int8 breaks (a 0..1 branch concatenated with a 0..~2000 branch) and save it.

    python scripts/train_mismatched.py -o build/mismatched.keras [--epochs 20]

The concatenation puts both branches on one int8 scale, sized for the large one; `tfquant diagnose`
names it, and `tfquant convert --fallback auto` keeps just what it must in float.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "build" / "mismatched.keras")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    from tfquant import zoo

    with np.load(ROOT / "data" / "digits_train.npz") as train:
        x, y = train["x"], train["y"]
    model = zoo.mismatched_concat()
    zoo.fit_classifier(model, x, y, epochs=args.epochs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
