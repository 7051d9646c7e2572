"""One conversion in a fresh process, so that its time and peak memory are its own.

    python bench/convert_worker.py tfquant|baseline MODEL.keras CALIB.npy OUT.tflite
Prints {"seconds": ..., "peak_rss_mb": ..., "bytes": ...} as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    flow, model_path, calib_path, out = sys.argv[1:5]
    import numpy as np

    calibration = np.load(calib_path)
    if flow == "tfquant":
        from tfquant.convert import calibrate, quantize_calibrated
        from tfquant.data import load_data
        from tfquant.models import load_model
        from tfquant.types import Recipe

        loaded = load_model(model_path)
        started = time.perf_counter()
        data = load_data(calibration, loaded.inputs).calibration_subset(len(calibration))
        tflite = quantize_calibrated(calibrate(loaded, data), Recipe(mode="int8"))
    else:
        import tf_keras

        from bench.baselines.tutorial import convert_int8

        model = tf_keras.models.load_model(model_path, compile=False)
        started = time.perf_counter()
        tflite = convert_int8(model, calibration)
    seconds = time.perf_counter() - started
    Path(out).write_bytes(tflite)
    from tfquant.harness import peak_rss_mb

    peak = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "bytes": len(tflite)}))


if __name__ == "__main__":
    main()
