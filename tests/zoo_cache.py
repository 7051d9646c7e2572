"""Zoo models trained once and kept between test runs (in build/zoo-cache, keyed by the zoo's source).

A clean checkout trains them; a second `make test` on the same machine loads them.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from tfquant import zoo

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "zoo-cache"

# Small budgets for the heavy keras.applications CNNs: enough training for BatchNorm statistics and
# a better-than-chance classifier; the accuracy checks that need a well-trained model are made on
# the other kinds, which train in seconds.
HEAVY = {"resnet50", "densenet121", "nasnet_mobile", "convnext_tiny", "inception_v3", "efficientnet_b0"}


@dataclass(frozen=True)
class Trained:
    name: str
    version: int
    path: Path  # the saved model (.keras)
    calib: Path  # .npz of 200 training inputs
    test: Path  # .npz of held-out inputs and labels


def _key(name: str, version: int, epochs: Optional[int], samples: Optional[int]) -> str:
    source = inspect.getsource(zoo).encode()
    return hashlib.sha256(source + f"{name}/{version}/{epochs}/{samples}".encode()).hexdigest()[:16]


def trained(name: str, version: int, *, epochs: Optional[int] = None, test_samples: Optional[int] = None) -> Trained:
    """Train (or load from the cache) zoo entry `name` in Keras `version`, with its data as files."""
    heavy = name in HEAVY
    epochs = epochs or (1 if heavy else None)
    train_samples = 160 if heavy else None
    key = _key(name, version, epochs, train_samples)
    folder = CACHE / f"{name}_k{version}_{key}"
    path = folder / "model.keras"
    data = zoo.ZOO[name].data()
    folder.mkdir(parents=True, exist_ok=True)
    calib, test = folder / "calib.npz", folder / "test.npz"
    # One trainer per model: test workers running side by side wait for the first one's file.
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            model, _ = zoo.train(name, version, epochs=epochs, train_samples=train_samples)
            partial = folder / ".model.keras"
            model.save(partial)
            partial.rename(path)
        if not test.exists():
            count = test_samples or (160 if heavy else None)
            np.savez(calib, **{k: v[:200] for k, v in data.train.items() if not k.startswith("y")})
            np.savez(test, **{k: v[:count] for k, v in data.test.items()})
    return Trained(name, version, path, calib, test)
