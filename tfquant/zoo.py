"""Small seeded example models for the demo, the tests and the benchmarks.

All are tf_keras (Keras 2) models so that the tfmot stages accept them too.

Example:
    >>> from tfquant import zoo
    >>> model = zoo.digits_cnn()
    >>> model.count_params()
    151306
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._keras import keras

layers = keras.layers


def digits_cnn(*, seed: int = 0, input_shape=(8, 8, 1), classes: int = 10) -> keras.Model:
    """The example CNN for the 8x8 UCI digits: two convs, a pool, a dense layer. ~151k parameters."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def residual_cnn(*, seed: int = 0, input_shape=(8, 8, 1), classes: int = 10, width: int = 32) -> keras.Model:
    """A small ResNet-style model: conv stem, two residual blocks with BatchNorm and Add."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for _ in range(2):
        shortcut = x
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Add()([shortcut, x])
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="residual_cnn")


def fit_classifier(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 15,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
    callbacks=None,
    verbose: int = 0,
):
    """Compile with Adam and sparse categorical cross-entropy and fit; returns the History."""
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=validation,
                     callbacks=callbacks, verbose=verbose, shuffle=True)


def mismatched_concat(*, seed: int = 0, input_shape=(8, 8, 1), classes: int = 10, big: float = 5000.0) -> keras.Model:
    """A model that full int8 breaks: a learned branch in ~0..1 concatenated with a branch in 0..`big`.

    The concatenation shares one int8 scale across both branches, sized for the large one, so the
    small, informative branch rounds to a few levels. Models with a raw sensor value or an
    unnormalized statistic joined to learned features fail the same way.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    flat = layers.Flatten()(inputs)
    features = layers.Dense(64, activation="sigmoid", name="features")(flat)
    # Mean ink of the image, unnormalized: little information, a large range.
    ink = layers.GlobalAveragePooling2D()(inputs)
    ink = layers.Rescaling(big, name="ink_scaled")(ink)
    joined = layers.Concatenate(name="joined")([features, ink])
    outputs = layers.Dense(classes, activation="softmax", name="probs")(joined)
    return keras.Model(inputs, outputs, name="mismatched_concat")
