"""Raw-feature preprocessing built from Keras preprocessing layers, inside the model.

The vocabularies and statistics are adapted on training data and live in the layers, so a
saved or exported model takes raw features (strings and floats) in TF Serving.
"""

from keras_mmoe.features.naming import sanitize_feature_name, sanitize_feature_names
from keras_mmoe.features.encoder import build_feature_encoder, census_feature_encoder
from keras_mmoe.features.fill_missing import FillMissing
from keras_mmoe.features.missing_indicator import MissingIndicator
from keras_mmoe.features.split_tokens import SplitTokens
from keras_mmoe.features.token_pooling import TokenPooling
from keras_mmoe.features.preprocessing import build_preprocessing, label_scaling, serving_options

__all__ = [
    "FillMissing",
    "MissingIndicator",
    "SplitTokens",
    "TokenPooling",
    "build_feature_encoder",
    "build_preprocessing",
    "census_feature_encoder",
    "label_scaling",
    "sanitize_feature_name",
    "sanitize_feature_names",
    "serving_options",
]
