"""The preprocessing of a spec's raw features, as Keras layers inside the model.

:func:`build_preprocessing` turns a :class:`~keras_mmoe.data.Spec` and its
:class:`~keras_mmoe.data.Statistics` into one named ``keras.Input`` per feature and the dense
vector the model reads. Vocabularies, means and variances are constants of the layers, so the
saved ``.keras`` file and the exported SavedModel take the raw columns::

    numeric            Input float32 (batch, 1), NaN = missing
                         -> [MissingIndicator]  -> FillMissing(default) -> [Normalization(mean, variance)]
    categorical        Input string (or int64) (batch, 1), "" (or -1) = missing
                         -> StringLookup / IntegerLookup (OOV index 0) or Hashing (missing -> bin 0)
                         -> Embedding -> Reshape (batch, dim)   or   CategoryEncoding one_hot (batch, V + 1)
    multi_categorical  Input string (batch, 1), tokens joined by the separator, "" = no token
                         -> SplitTokens -> StringLookup(mask "") or Hashing(mask "") -> Embedding
                         -> TokenPooling(mean | sum) (batch, dim); an empty bag gives zeros
    all                Concatenate -> (batch, D)

Unseen and missing categories share the out-of-vocabulary index. :func:`serving_options` gives
the export arguments that keep the missing-value rules at serving time.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Dict, Tuple, Union

from keras_mmoe._keras import keras
from keras_mmoe.data.spec import MISSING_ID, load_spec
from keras_mmoe.features.fill_missing import FillMissing
from keras_mmoe.features.missing_indicator import MissingIndicator
from keras_mmoe.features.split_tokens import SplitTokens
from keras_mmoe.features.token_pooling import TokenPooling

if TYPE_CHECKING:
    from keras_mmoe.data.spec import Spec
    from keras_mmoe.data.statistics import Statistics

#: The OOV token of the string lookups (a data value equal to it is out of vocabulary too).
OOV_TOKEN = "[UNK]"


def _input_dtype(feature):
    if feature.type == "numeric":
        return "float32"
    return "int64" if feature.type == "categorical" and feature.dtype == "int64" else "string"


def _lookup(feature, fstats, mask):
    """The index layer of a categorical feature: lookup (OOV index 0, or 1 after the mask) or hashing."""
    n = feature.name
    if feature.hash_bins is not None:
        mask_value = MISSING_ID if feature.dtype == "int64" else ""
        return keras.layers.Hashing(num_bins=feature.hash_bins + 1, mask_value=mask_value, name=f"{n}_hashing"), \
            feature.hash_bins + 1
    vocabulary = list(fstats.vocabulary)
    if feature.dtype == "int64":
        layer = keras.layers.IntegerLookup(vocabulary=vocabulary, num_oov_indices=1, mask_token=None,
                                           oov_token=MISSING_ID, name=f"{n}_lookup")
        return layer, len(vocabulary) + 1
    vocabulary = [v for v in vocabulary if v != OOV_TOKEN and v != ""]
    layer = keras.layers.StringLookup(vocabulary=vocabulary, num_oov_indices=1, oov_token=OOV_TOKEN,
                                      mask_token="" if mask else None, name=f"{n}_lookup")
    return layer, len(vocabulary) + 1 + (1 if mask else 0)


def build_preprocessing(
    spec: Union[Spec, str, os.PathLike, dict], statistics: Statistics, *, name: str = "encoded_features"
) -> Tuple[Dict[str, Any], Any]:
    """The model's inputs and its dense feature vector, built from the spec and the train statistics.

    Args:
        spec: a :class:`~keras_mmoe.data.Spec` (or what :func:`~keras_mmoe.data.load_spec` takes).
        statistics: the :class:`~keras_mmoe.data.Statistics` of the train split
            (:func:`~keras_mmoe.data.compute_statistics`).
        name: name of the final ``Concatenate`` layer.

    Returns:
        ``(inputs, encoded)``: ``{feature name: keras.Input}`` of shape ``(1,)`` (float32 numbers,
        strings, int64 ids), and the ``(batch, D)`` float32 tensor to feed a model, e.g.
        ``build_mmoe(inputs, tasks, features=encoded)`` or your own layers.

    Example:

    >>> spec = keras_mmoe.data.load_spec("spec.toml")
    >>> stats = keras_mmoe.data.compute_statistics(spec)
    >>> inputs, encoded = build_preprocessing(spec, stats)
    >>> experts = keras_mmoe.MMoELayer(num_experts=4, expert_units=16, task_names=["click"])(encoded)
    """
    spec = load_spec(spec)
    inputs, parts = {}, []
    for feature in spec.features:
        n = feature.name
        fstats = statistics.features.get(n)
        if fstats is None:
            raise ValueError(f"`statistics` has no entry for the feature {n!r}; compute them from this spec")
        x = keras.Input(shape=(1,), dtype=_input_dtype(feature), name=n)
        inputs[n] = x
        if feature.type == "numeric":
            if feature.missing_indicator:
                parts.append(MissingIndicator(name=f"{n}_missing")(x))
            value = FillMissing(feature.default, name=f"{n}_fill")(x) if feature.default is not None else x
            if feature.normalize:
                value = keras.layers.Normalization(axis=-1, mean=fstats.mean, variance=fstats.variance,
                                                   name=f"{n}_normalization")(value)
            parts.append(value)
        elif feature.type == "categorical":
            lookup, size = _lookup(feature, fstats, mask=False)
            ids = lookup(x)
            if feature.encoding == "one_hot":
                parts.append(keras.layers.CategoryEncoding(num_tokens=size, output_mode="one_hot",
                                                           name=f"{n}_one_hot")(ids))
            else:
                dim = feature.embedding_dim
                embedded = keras.layers.Embedding(size, dim, name=f"{n}_embedding")(ids)
                parts.append(keras.layers.Reshape((dim,), name=f"{n}_embedding_flat")(embedded))
        else:
            tokens = SplitTokens(feature.separator, name=f"{n}_split")(x)
            lookup, size = _lookup(feature, fstats, mask=True)
            ids = lookup(tokens)
            embedded = keras.layers.Embedding(size, feature.embedding_dim, name=f"{n}_embedding")(ids)
            parts.append(TokenPooling(feature.combiner, name=f"{n}_pooling")([embedded, ids]))
    encoded = parts[0] if len(parts) == 1 else keras.layers.Concatenate(axis=-1, name=name)(parts)
    return inputs, encoded


def label_scaling(spec: Spec, statistics: Statistics) -> dict:
    """``{task: (std, mean)}`` of the regression tasks with ``normalize_label``: the model's
    ``output_scaling`` (its tower predicts the standardized label, its output is in label units)."""
    scaling = {}
    for task in spec.tasks:
        if task.type == "regression" and task.normalize_label:
            ls = statistics.labels[task.name]
            std = math.sqrt(ls.variance) if ls.variance > 0 else 1.0
            scaling[task.name] = (std, ls.mean)
    return scaling


def serving_options(spec: Spec) -> dict:
    """Arguments of :func:`keras_mmoe.serving.export_for_serving` that keep the spec's rules at serving time.

    * ``example_defaults``: an absent ``tf.train.Example`` feature reads as missing: NaN for a
      number with a ``default`` (imputed in the model), ``""`` / -1 for a category (the OOV
      index). A number without a default stays required.
    * ``example_separators``: a multi_categorical feature is a ``bytes_list`` of any length in
      an Example, joined with its separator into the string the model splits again.
    * ``allow_non_finite``: the numbers the model imputes may be NaN in a request.
    """
    defaults, separators, allow = {}, {}, []
    for f in spec.features:
        if f.type == "numeric":
            if f.default is not None:
                defaults[f.name] = float("nan")
                allow.append(f.name)
        elif f.type == "multi_categorical":
            separators[f.name] = f.separator
        else:
            defaults[f.name] = MISSING_ID if f.dtype == "int64" else ""
    return {"example_defaults": defaults, "example_separators": separators, "allow_non_finite": allow}
