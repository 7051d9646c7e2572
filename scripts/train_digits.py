"""Train the example digits CNN on data/digits_train.npz and save it as a Keras 2 .keras file.

    python scripts/train_digits.py -o build/digits_cnn.keras [--epochs 15]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "build" / "digits_cnn.keras")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tfquant import zoo

    with np.load(ROOT / "data" / "digits_train.npz") as train, np.load(ROOT / "data" / "digits_test.npz") as test:
        x, y, x_test, y_test = train["x"], train["y"], test["x"], test["y"]
    model = zoo.digits_cnn(seed=args.seed)
    started = time.perf_counter()
    zoo.fit_classifier(model, x, y, epochs=args.epochs, seed=args.seed)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.output)
    print(f"trained {model.name} ({model.count_params():,} parameters) in {time.perf_counter() - started:.1f} s: "
          f"Keras test accuracy {100 * accuracy:.2f} % -> {args.output}")


if __name__ == "__main__":
    main()
