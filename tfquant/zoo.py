"""Small seeded models of every kind a user brings, with data made from the shipped UCI digits.

For the demo, the tests and the benchmarks. Every entry builds with Keras 3 (`keras`) or
Keras 2 (`tf_keras`, what tfmot needs) from the same code, from `keras.applications` (weights
None, small inputs) or from layers: CNNs, recurrent models (LSTM, GRU, SimpleRNN, Bidirectional,
stacked, masked), a Transformer encoder, a tabular regression, an L2-normalized embedding, a model
with two inputs and one with two outputs. `train(name, keras)` trains one for a few epochs and
returns it with its data.

Example:
    >>> from tfquant import zoo
    >>> model = zoo.digits_cnn()
    >>> model.count_params()
    151306
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ._keras import keras

layers = keras.layers
DATA = Path(__file__).resolve().parent.parent / "data"


# --- the demo models (tf_keras) -------------------------------------------------------------


def digits_cnn(*, seed: int = 0, input_shape=(8, 8, 1), classes: int = 10) -> keras.Model:
    """The example CNN for the 8x8 UCI digits: two convs, a pool, a dense layer. ~151k parameters."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    # Named, so that the file's tensor names do not depend on the models made before in the process.
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2d")(inputs)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2d_1")(x)
    x = layers.MaxPooling2D(name="max_pooling2d")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
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


# --- data made from the digits --------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Training and held-out data, as dicts of arrays keyed by input name and `y` / `y_<output>`."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


# Training digits, their classes, held-out digits, their classes.
Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _digits() -> Digits:
    with np.load(DATA / "digits_train.npz") as train, np.load(DATA / "digits_test.npz") as test:
        return train["x"], train["y"], test["x"], test["y"]


def folds(count: int = 5, seed: int = 0) -> list[Digits]:
    """All 1,797 digits in `count` stratified folds: for each fold, the other folds to train on and it to test.

    Each class's samples are shuffled by `seed` and dealt to the folds in turn, so every fold holds
    each class in proportion, and every digit is held out exactly once over the folds.
    """
    with np.load(DATA / "digits.npz") as every:
        x, y = every["x"], every["y"]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        fold[members] = np.arange(len(members)) % count
    return [(x[fold != k], y[fold != k], x[fold == k], y[fold == k]) for k in range(count)]


def _split(make: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]], source: Optional[Digits] = None) -> Split:
    x, y, x_test, y_test = source or _digits()
    return Split(make(x, y), make(x_test, y_test))


def images(size: int = 32, scale: float = 1.0, source: Optional[Digits] = None) -> Split:
    """The digits as size×size RGB images (nearest upsampling), pixel values in [0, scale]."""
    def make(x, y):
        repeat = size // 8
        big = np.repeat(np.repeat(x, repeat, axis=1), repeat, axis=2)
        pad = (size - big.shape[1]) // 2
        big = np.pad(big, ((0, 0), (pad, size - big.shape[1] - pad), (pad, size - big.shape[2] - pad), (0, 0)))
        return {"image": np.repeat(big, 3, axis=3).astype(np.float32) * scale, "y": y}
    return _split(make, source)


def rows(source: Optional[Digits] = None) -> Split:
    """Each digit as a sequence of its 8 rows of 8 pixels."""
    return _split(lambda x, y: {"rows": x[..., 0].astype(np.float32), "y": y}, source)


def tokens(pad: bool = True, source: Optional[Digits] = None) -> Split:
    """Each digit as 32 token ids, a text-like input: the image at 8x4 (pairs of columns, the brighter
    kept), pixel intensity 0..16 -> ids 1..17; 0 is padding.

    With `pad`, every third sequence starts with up to 8 padding tokens, so masking matters.
    """
    def make(x, y):
        image = x[..., 0].reshape(len(x), 8, 4, 2).max(axis=3)
        ids = np.round(image.reshape(len(x), 32) * 16).astype(np.int32) + 1
        if pad:
            rng = np.random.default_rng(0)
            for i in range(0, len(ids), 3):
                ids[i, :int(rng.integers(1, 9))] = 0
        return {"tokens": ids, "y": y}
    return _split(make, source)


def tabular(source: Optional[Digits] = None) -> Split:
    """Regression: 16 summary features of each digit (row and column ink) -> a smooth nonlinear score."""
    weights = 0.25 * np.random.default_rng(7).standard_normal((16, 4)).astype(np.float32)

    def make(x, y):
        image = x[..., 0]
        features = np.concatenate([image.sum(axis=1), image.sum(axis=2)], axis=1) / 4.0
        target = np.sin(features @ weights).sum(axis=1, keepdims=True) + 0.1 * (y[:, None] - 4.5)
        return {"features": features.astype(np.float32), "y": target.astype(np.float32)}
    return _split(make, source)


def raw_table(source: Optional[Digits] = None) -> Split:
    """Six raw columns of each digit, as a table holds them: an ink total in 0..300, a year in 1970..1985,
    a 0/1 flag and three means in 0..1 (one int8 scale for all six leaves the means no level) -> its
    class."""
    def make(x, y):
        image = x[..., 0]
        columns = [image.sum(axis=(1, 2)) * 10, 1970 + np.round(image[:, :, 4:].sum(axis=(1, 2))),
                   image[:, 0].sum(axis=1) > 0.5, image[:, :4].mean(axis=(1, 2)), image[:, 4:].mean(axis=(1, 2)),
                   image[:, :, :4].mean(axis=(1, 2))]
        return {"features": np.stack(columns, axis=1).astype(np.float32), "y": y}
    return _split(make, source)


def two_inputs(source: Optional[Digits] = None) -> Split:
    """The digit image and a vector of its 16 row and column sums, for one class."""
    def make(x, y):
        image = x[..., 0]
        stats = np.concatenate([image.sum(axis=1), image.sum(axis=2)], axis=1).astype(np.float32) / 8.0
        return {"image": x, "stats": stats, "y": y}
    return _split(make, source)


def two_outputs(source: Optional[Digits] = None) -> Split:
    """The digit image, with its class and the mean ink in its lower half (a regression target)."""
    def make(x, y):
        ink = x[:, 4:, :, 0].mean(axis=(1, 2))[:, None].astype(np.float32) * 10
        return {"image": x, "y_digit": y, "y_ink": ink}
    return _split(make, source)


def digit_images(source: Optional[Digits] = None) -> Split:
    return _split(lambda x, y: {"image": x, "y": y}, source)


# --- the zoo --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One kind of model: how to build it with a Keras module, its data, and how long to train it."""

    name: str
    kind: str  # "cnn", "recurrent", "transformer", "regression", "tabular", "embedding", "multi"
    build: Callable  # (keras module) -> model
    data: Callable[..., Split]  # (source=None) -> Split: the shipped split, or the digits given
    epochs: int = 3
    loss: object = "sparse_categorical_crossentropy"
    train_samples: Optional[int] = None
    classifier: bool = True
    learning_rate: float = 1e-3


ZOO: dict[str, Entry] = {}


def _entry(name: str, kind: str, data: Callable[..., Split], **options):
    def wrap(build):
        ZOO[name] = Entry(name, kind, build, data, **options)
        return build
    return wrap


def _app(k, name: str, shape=(32, 32, 3), **kwargs):
    return getattr(k.applications, name)(weights=None, input_shape=shape, classes=10, **kwargs)


_entry("mobilenet_v2", "cnn", images, epochs=4, learning_rate=3e-3)(lambda k: _app(k, "MobileNetV2", alpha=0.35))
_entry("mobilenet_v3_small", "cnn", images, epochs=2, learning_rate=3e-3)(lambda k: _app(k, "MobileNetV3Small", alpha=0.75,
                                                               include_preprocessing=False))
# EfficientNetB0 stays a near coin toss for longer: after 2 epochs it classified 72 % (Keras 3) and 53 %
# (Keras 2) of the held-out digits, with logits up to 128 and 17 % of samples' top two within 0.3 of
# each other; at 6 it is a classifier (88 % and 82 %).
_entry("efficientnet_b0", "cnn", partial(images, scale=255.0), epochs=6)(lambda k: _app(k, "EfficientNetB0"))
_entry("resnet50", "cnn", images, epochs=2)(lambda k: _app(k, "ResNet50"))
_entry("densenet121", "cnn", images, epochs=2)(lambda k: _app(k, "DenseNet121"))
_entry("nasnet_mobile", "cnn", images, epochs=2)(lambda k: _app(k, "NASNetMobile"))
_entry("convnext_tiny", "cnn", partial(images, scale=255.0), epochs=2)(lambda k: _app(k, "ConvNeXtTiny"))
_entry("inception_v3", "cnn", partial(images, size=75), epochs=2, train_samples=600)(
    lambda k: _app(k, "InceptionV3", shape=(75, 75, 3)))


def _head(k, x, name: str = "probs"):
    return k.layers.Dense(10, activation="softmax", name=name)(x)


@_entry("embedding_lstm", "recurrent", tokens, epochs=12, learning_rate=5e-3)
def _embedding_lstm(k):
    inputs = k.Input((32,), dtype="int32", name="tokens")
    x = k.layers.Embedding(18, 16, mask_zero=True)(inputs)
    x = k.layers.LSTM(32)(x)
    return k.Model(inputs, _head(k, x), name="embedding_lstm")


@_entry("stacked_lstm", "recurrent", rows, epochs=6, learning_rate=5e-3)
def _stacked_lstm(k):
    inputs = k.Input((8, 8), name="rows")
    x = k.layers.LSTM(32, return_sequences=True)(inputs)
    x = k.layers.LSTM(32)(x)
    return k.Model(inputs, _head(k, x), name="stacked_lstm")


@_entry("gru", "recurrent", rows, epochs=6, learning_rate=5e-3)
def _gru(k):
    inputs = k.Input((8, 8), name="rows")
    return k.Model(inputs, _head(k, k.layers.GRU(48)(inputs)), name="gru")


@_entry("simple_rnn", "recurrent", rows, epochs=6, learning_rate=5e-3)
def _simple_rnn(k):
    inputs = k.Input((8, 8), name="rows")
    return k.Model(inputs, _head(k, k.layers.SimpleRNN(48)(inputs)), name="simple_rnn")


@_entry("bidirectional_lstm", "recurrent", rows, epochs=6, learning_rate=5e-3)
def _bidirectional(k):
    inputs = k.Input((8, 8), name="rows")
    x = k.layers.Bidirectional(k.layers.LSTM(24))(inputs)
    return k.Model(inputs, _head(k, x), name="bidirectional_lstm")


@_entry("conv1d_gru", "recurrent", rows, epochs=6, learning_rate=5e-3)
def _conv1d_gru(k):
    inputs = k.Input((8, 8), name="rows")
    x = k.layers.Conv1D(32, 3, padding="same", activation="relu")(inputs)
    x = k.layers.GRU(32)(x)
    return k.Model(inputs, _head(k, x), name="conv1d_gru")


@_entry("transformer", "transformer", partial(tokens, pad=True), epochs=15)
def _transformer(k):
    """A Transformer encoder classifier: token and learned position embeddings (position ids made
    from the input by built-in ops, no custom layer), two blocks of masked self-attention and GELU
    feed-forward with LayerNormalization."""
    width = 32
    inputs = k.Input((32,), dtype="int32", name="tokens")
    x = k.layers.Embedding(18, width, name="token_embedding")(inputs)
    x = k.layers.Add()([x, k.layers.Embedding(32, width, name="position_embedding")(_position_ids(k, inputs))])
    mask = _padding_mask(k, inputs)
    for block in range(2):
        attention = k.layers.MultiHeadAttention(num_heads=2, key_dim=16, name=f"attention_{block}")(
            x, x, attention_mask=mask)
        x = k.layers.LayerNormalization(name=f"norm_a{block}")(k.layers.Add()([x, attention]))
        hidden = k.layers.Dense(64, activation="gelu")(x)
        x = k.layers.LayerNormalization(name=f"norm_f{block}")(k.layers.Add()([x, k.layers.Dense(width)(hidden)]))
    x = k.layers.GlobalAveragePooling1D()(x)
    return k.Model(inputs, _head(k, x), name="transformer")


def _position_ids(k, ids):
    """0, 1, 2, ... along the sequence, from built-in ops on the input (Keras 3 ops or TF ops)."""
    if hasattr(k, "ops"):
        return k.ops.cumsum(k.ops.ones_like(ids), axis=1) - 1
    import tensorflow as tf

    return tf.cumsum(tf.ones_like(ids), axis=1) - 1


def _padding_mask(k, ids):
    """(batch, query, key): attend to real tokens only (id 0 is padding)."""
    if hasattr(k, "ops"):
        keys = k.ops.expand_dims(k.ops.not_equal(ids, 0), axis=1)
        return k.ops.repeat(keys, ids.shape[1], axis=1)
    import tensorflow as tf

    keys = tf.expand_dims(tf.not_equal(ids, 0), axis=1)
    return tf.repeat(keys, ids.shape[1], axis=1)


@_entry("tabular_regression", "regression", tabular, epochs=30, loss="mse", classifier=False)
def _tabular(k):
    inputs = k.Input((16,), name="features")
    x = k.layers.Dense(64, activation="relu")(inputs)
    x = k.layers.Dense(64, activation="relu")(x)
    return k.Model(inputs, k.layers.Dense(1, name="score")(x), name="tabular_regression")


@_entry("raw_table", "tabular", raw_table, epochs=20)
def _raw_table(k):
    """The Keras tutorials' model of a table: a Normalization adapted to the raw columns, then dense layers."""
    normalize = k.layers.Normalization()
    normalize.adapt(raw_table().train["features"])
    inputs = k.Input((6,), name="features")
    x = k.layers.Dense(32, activation="relu")(normalize(inputs))
    x = k.layers.Dense(32, activation="relu")(x)
    return k.Model(inputs, _head(k, x), name="raw_table")


@_entry("l2_embedding", "embedding", digit_images, epochs=10, classifier=False)
def _l2_embedding(k):
    """Trained as a classifier through a head; converted up to its unit-length embedding."""
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(32, activation="relu")(x)
    embedding = k.layers.UnitNormalization(name="embedding")(k.layers.Dense(16)(x))
    return k.Model(inputs, embedding, name="l2_embedding")


@_entry("two_inputs", "multi", two_inputs, epochs=8)
def _two_inputs(k):
    image = k.Input((8, 8, 1), name="image")
    stats = k.Input((16,), name="stats")
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    x = k.layers.Flatten()(x)
    s = k.layers.Dense(16, activation="relu")(stats)
    x = k.layers.Concatenate()([x, s])
    x = k.layers.Dense(32, activation="relu")(x)
    return k.Model([image, stats], _head(k, x), name="two_inputs")


@_entry("two_outputs", "multi", two_outputs, epochs=10, loss={"digit": "sparse_categorical_crossentropy", "ink": "mse"})
def _two_outputs(k):
    image = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(32, activation="relu")(x)
    return k.Model(image, [_head(k, x, "digit"), k.layers.Dense(1, name="ink")(x)], name="two_outputs")


def keras_module(version: int):
    """Keras 3 (`keras`) or Keras 2 (`tf_keras`)."""
    if version == 2:
        return keras
    from ._keras import keras3

    return keras3()


def build(name: str, version: int = 3, *, seed: int = 0):
    """A fresh, untrained model of zoo entry `name` in Keras `version` (2 or 3)."""
    k = keras_module(version)
    k.utils.set_random_seed(seed)
    return ZOO[name].build(k)


def train(name: str, version: int = 3, *, seed: int = 0, epochs: Optional[int] = None,
          train_samples: Optional[int] = None, verbose: int = 0, source: Optional[Digits] = None):
    """Build and train zoo entry `name`; returns (model, Split).

    The data is the shipped split of the digits, or `source` (one of `folds()`) made into the
    entry's inputs.

    BatchNormalization statistics are re-estimated over the training data after fitting, so that
    a few epochs from scratch give a model whose inference-mode accuracy means something.
    """
    entry = ZOO[name]
    k = keras_module(version)
    model = build(name, version, seed=seed)
    data = entry.data(source=source)
    train_data = data.train
    samples = train_samples or entry.train_samples
    if samples:
        train_data = {key: value[:samples] for key, value in train_data.items()}
    inputs = {key: value for key, value in train_data.items() if not key.startswith("y")}
    targets = _targets(model, train_data, entry)
    fitted = model
    if name == "l2_embedding":  # trained through a classification head on the embedding
        head = k.layers.Dense(10, activation="softmax")(model.output)
        fitted = k.Model(model.input, head)
    fitted.compile(optimizer=k.optimizers.Adam(entry.learning_rate), loss=entry.loss if name != "l2_embedding" else
                   "sparse_categorical_crossentropy", metrics=None)
    fitted.fit(_single(inputs), targets, epochs=epochs or entry.epochs, batch_size=32, verbose=verbose, shuffle=True)
    _recalibrate_batch_norm(fitted, _single(inputs), k)
    return model, data


def _targets(model, train_data, entry):
    if isinstance(entry.loss, dict):
        return {name: train_data[f"y_{name}"] for name in entry.loss}
    return train_data["y"]


def _single(inputs: dict[str, np.ndarray]):
    return next(iter(inputs.values())) if len(inputs) == 1 else inputs


def _recalibrate_batch_norm(model, inputs, k, batch: int = 256) -> None:
    """Set every BatchNormalization's moving statistics to those of the training data."""
    norms = [layer for layer in _layers(model) if isinstance(layer, k.layers.BatchNormalization)]
    if not norms:
        return
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    first = (inputs[:batch] if not isinstance(inputs, dict) else {key: v[:batch] for key, v in inputs.items()})
    model(first, training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum


def _layers(model):
    flatten = getattr(model, "_flatten_layers", None)
    return list(flatten(include_self=False, recursive=True)) if flatten else list(model.layers)
