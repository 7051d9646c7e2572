"""Train the digits CNN while watching its int8 file; keep the best int8 .tflite.

    python scripts/train_int8_checkpoint.py -o build/best_int8.tflite [--epochs 8] [--qat]

Every epoch tfquant converts the current weights to full int8, measures the file on the LiteRT
interpreter and logs val_int8_accuracy / val_int8_gap next to Keras' own metrics; the best file
is kept. With --qat the model is first trained in float, then fine-tuned quantization-aware.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "build" / "best_int8.tflite")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--qat", action="store_true", help="float training, then quantization-aware fine-tuning")
    args = parser.parse_args()

    import tfquant
    from tfquant import zoo
    from tfquant.callbacks import Int8Checkpoint, Int8Validation
    from tfquant.optimize.qat import quantize_aware

    with np.load(ROOT / "data" / "digits_train.npz") as train, np.load(ROOT / "data" / "digits_test.npz") as test:
        x, y, x_val, y_val = train["x"], train["y"], test["x"], test["y"]
    model = zoo.digits_cnn()
    learning_rate = 1e-3
    if args.qat:
        zoo.fit_classifier(model, x, y, epochs=args.epochs)
        model, _ = quantize_aware(model)
        learning_rate = 1e-4
    callbacks = [Int8Validation(x, (x_val, y_val)), Int8Checkpoint(args.output)]
    history = zoo.fit_classifier(model, x, y, epochs=args.epochs, learning_rate=learning_rate,
                                 validation=(x_val, y_val), callbacks=callbacks, verbose=2)
    best = int(np.argmax(history.history["val_int8_accuracy"]))
    print(f"best int8 epoch {best + 1}: val_int8_accuracy {history.history['val_int8_accuracy'][best]:.4f}, "
          f"Keras val_accuracy {history.history['val_accuracy'][best]:.4f} -> {args.output}")
    print(f"tfquant eval of the saved file: {tfquant.evaluate(args.output, (x_val, y_val)).accuracy:.4f}")


if __name__ == "__main__":
    main()
