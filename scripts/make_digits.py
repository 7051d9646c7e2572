"""Write data/digits*.npz from the UCI handwritten digits that scikit-learn ships (no download).

    python scripts/make_digits.py            # needs `pip install scikit-learn`

digits.npz holds all 1,797 samples; digits_train.npz / digits_test.npz are a seeded,
stratified 80/20 split (1,438 / 359). x is float32 (N, 8, 8, 1) in [0, 1] (pixel counts
0..16 divided by 16); y is int64 class labels 0..9.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 0
TEST_FRACTION = 0.2


def main() -> None:
    from sklearn.datasets import load_digits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)

    rng = np.random.default_rng(SEED)
    test = np.zeros(len(y), bool)
    for label in np.unique(y):  # stratified: the same share of every class in the test split
        members = np.flatnonzero(y == label)
        test[rng.choice(members, size=round(len(members) * TEST_FRACTION), replace=False)] = True

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "digits.npz", x=x, y=y)
    np.savez_compressed(args.out / "digits_train.npz", x=x[~test], y=y[~test])
    np.savez_compressed(args.out / "digits_test.npz", x=x[test], y=y[test])
    print(f"wrote {args.out}: {len(y)} samples, {int((~test).sum())} train, {int(test.sum())} test")


if __name__ == "__main__":
    main()
