"""The benchmark models, built and trained once and cached under build/bench/.

digits CNN and a ResNet-style CNN on the 8x8 digits; MobileNetV2 (keras.applications,
weights=None: nothing is downloaded) trained briefly on digits upscaled to 96x96 RGB. The
network is fully convolutional, so the 224x224 model reuses the 96x96 weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "bench"


def digits():
    with np.load(ROOT / "data" / "digits_train.npz") as train, np.load(ROOT / "data" / "digits_test.npz") as test:
        return train["x"], train["y"], test["x"], test["y"]


def service_digits_cnn(folder: Path) -> tuple[Path, np.ndarray]:
    """The digits CNN the service benches submit (6 epochs, seed 0), saved in `folder`: (its path,
    the training inputs, whose first rows are the jobs' calibration data)."""
    from tfquant import zoo

    with np.load(ROOT / "data" / "digits_train.npz") as train:
        x, y = train["x"], train["y"]
    model = zoo.digits_cnn(seed=0)
    zoo.fit_classifier(model, x, y, epochs=6, seed=0)
    path = Path(folder) / "digits_cnn.keras"
    model.save(path)
    return path, x


def upscale(x: np.ndarray, size: int) -> np.ndarray:
    """8x8 grey digits -> size x size RGB in [0, 1], bilinear, in chunks to bound memory."""
    import tensorflow as tf

    out = [tf.image.resize(x[i:i + 256], (size, size)).numpy() for i in range(0, len(x), 256)]
    return np.repeat(np.concatenate(out), 3, axis=-1).astype(np.float32)


def mobilenet_v2(size: int, alpha: float = 1.0):
    from tfquant._keras import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None, classes=10)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # keras.applications uses 0.999, made for ImageNet-length training; a few hundred steps
            # would leave the moving statistics at their initial values.
            layer.momentum = 0.9
    return model


def build_all(log=print) -> dict[str, dict]:
    """Train (or load from the cache) every model; returns name -> {path, calib, x_test, y_test}."""
    from tfquant import zoo
    from tfquant._keras import keras

    CACHE.mkdir(parents=True, exist_ok=True)
    x, y, x_test, y_test = digits()
    calib_idx = np.sort(np.random.default_rng(0).choice(len(x), 200, replace=False))
    models: dict[str, dict] = {}

    def cached(name: str, build, data):
        path = CACHE / f"{name}.keras"
        if not path.exists():
            log(f"training {name}")
            build().save(path)
        models[name] = {"path": path, **data}

    small = {"calib": x[calib_idx], "x_test": x_test, "y_test": y_test}

    def digits_cnn():
        model = zoo.digits_cnn()
        zoo.fit_classifier(model, x, y, epochs=15)
        return model

    def residual():
        model = zoo.residual_cnn(width=32)
        zoo.fit_classifier(model, x, y, epochs=12)
        return model

    cached("digits_cnn", digits_cnn, small)
    cached("resnet_style", residual, small)

    x96, x96_test = upscale(x, 96), upscale(x_test, 96)

    def mobilenet96():
        model = mobilenet_v2(96)
        zoo.fit_classifier(model, x96, y, epochs=8, learning_rate=1e-3, batch_size=32)
        return model

    cached("mobilenetv2_96", mobilenet96, {"calib": x96[calib_idx], "x_test": x96_test, "y_test": y_test})

    path224 = CACHE / "mobilenetv2_224_finetuned2.keras"  # the name carries the recipe: no stale cache
    if not path224.exists():
        log("training mobilenetv2_224 (from the 96x96 weights)")
        model = mobilenet_v2(224)
        model.set_weights(keras.models.load_model(models["mobilenetv2_96"]["path"], compile=False).get_weights())
        # Digits at 224 look different to the same filters: a short fine-tune at that size.
        x224 = upscale(x, 224)
        zoo.fit_classifier(model, x224, y, epochs=2, learning_rate=5e-4, batch_size=32)
        del x224
        model.save(path224)
    x224_calib = upscale(x[calib_idx], 224)
    models["mobilenetv2_224"] = {"path": path224, "calib": x224_calib, "x_test": upscale(x_test, 224), "y_test": y_test}
    return models


def quantize_measured(model: Any, calibration: Any, **options: Any) -> tuple[Any, Optional[str]]:
    """`tfquant.quantize` for a bench row: (result, error text). A budget or strict-mode failure still
    carries the file it measured, which the row reports beside the error; the result is None only where
    no file was made."""
    import tfquant

    try:
        return tfquant.quantize(model, calibration, **options), None
    except tfquant.TfquantError as exc:
        return getattr(exc, "result", None), str(exc)


def cnn_bench_arguments(description: str, bench: str, unit: str) -> argparse.ArgumentParser:
    """The arguments every bench over the zoo's CNNs takes: which CNNs and Keras versions, how many
    calibration samples per `unit` (a draw, a fold), and whether to keep bench/BENCH.json's other rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", nargs="*", help="zoo CNNs to run (default: every one)")
    parser.add_argument("--versions", nargs="*", type=int, default=[3, 2])
    parser.add_argument("--samples", type=int, default=200, help=f"calibration samples per {unit}")
    parser.add_argument("--merge", action="store_true", help=f"keep the rows of bench/{bench}.json that this run "
                                                              "does not redo")
    return parser


def zoo_cnns(only: Optional[list[str]]) -> list[str]:
    """The zoo's CNNs, or those of them named in `only`, in the zoo's order."""
    from tfquant import zoo

    return [n for n, entry in zoo.ZOO.items() if entry.kind == "cnn" and (not only or n in only)]
