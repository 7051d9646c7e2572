"""The flow of TensorFlow's post-training integer quantization tutorial, written plainly.

https://www.tensorflow.org/lite/performance/post_training_integer_quant: TFLiteConverter with a
representative dataset and int8 IO, then an Interpreter loop that quantizes one sample at a
time, invokes, and compares the argmax with the label. This is what tfquant is measured against.

As a program, it is what a user of the tutorial runs, start to finish, in a fresh process:

    python bench/baselines/tutorial.py MODEL.keras CALIB.npz EVAL.npz OUT.tflite

It loads the model (a tf_keras model goes through `from_keras_model`; a Keras 3 model is exported
as a SavedModel first, as the LiteRT guide says), converts it with the calibration samples,
writes the file, evaluates it sample by sample, and prints {"accuracy", "bytes"} as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np


def representative(calibration: np.ndarray):
    def representative_data_gen():
        for sample in calibration:
            yield [sample[None].astype(np.float32)]

    return representative_data_gen


def convert_int8(keras_model, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    return _int8(converter, calibration)


def convert_int8_saved_model(saved_model_dir: str, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    return _int8(tf.lite.TFLiteConverter.from_saved_model(saved_model_dir), calibration)


def _int8(converter, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def evaluate_per_sample(tflite: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    correct = 0
    for sample, label in zip(x, y):
        if input_details["dtype"] == np.int8:
            scale, zero_point = input_details["quantization"]
            sample = sample / scale + zero_point
        interpreter.set_tensor(input_details["index"], np.expand_dims(sample, 0).astype(input_details["dtype"]))
        interpreter.invoke()
        output = interpreter.get_tensor(output_details["index"])[0]
        correct += int(output.argmax() == label)
    return correct / len(y)


def _only_array(path: str, *, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path) as data:
        inputs = [k for k in data.files if not k.startswith("y")]
        return data[inputs[0]], (data["y"] if labels else None)


def main(argv: list[str]) -> None:
    model_path, calib_path, eval_path, out = argv
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import zipfile

    calibration, _ = _only_array(calib_path, labels=False)
    x, y = _only_array(eval_path, labels=True)
    with zipfile.ZipFile(model_path) as archive:
        keras_version = json.loads(archive.read("metadata.json"))["keras_version"]
    if keras_version.startswith("3"):  # Keras 3: export a SavedModel, convert that
        import keras

        model = keras.saving.load_model(model_path, compile=False)
        with tempfile.TemporaryDirectory() as tmp:
            model.export(tmp, verbose=False)
            tflite = convert_int8_saved_model(tmp, calibration)
    else:
        import tf_keras

        model = tf_keras.models.load_model(model_path, compile=False)
        tflite = convert_int8(model, calibration)
    with open(out, "wb") as handle:
        handle.write(tflite)
    print(json.dumps({"accuracy": evaluate_per_sample(tflite, x, y), "bytes": len(tflite)}))


if __name__ == "__main__":
    main(sys.argv[1:])
