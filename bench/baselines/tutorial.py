"""The flow of TensorFlow's post-training integer quantization tutorial, written plainly.

https://www.tensorflow.org/lite/performance/post_training_integer_quant: TFLiteConverter with a
representative dataset and int8 IO, then an Interpreter loop that quantizes one sample at a
time, invokes, and compares the argmax with the label. This is what tfquant is measured against.
"""

from __future__ import annotations

import numpy as np


def convert_int8(keras_model, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    def representative_data_gen():
        for sample in calibration:
            yield [sample[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_data_gen
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
