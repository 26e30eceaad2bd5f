"""Raw-feature preprocessing built from Keras preprocessing layers, inside the model.

The vocabularies and statistics are adapted on training data and live in the layers, so a
saved or exported model takes raw features (strings and floats) in TF Serving.
"""

from keras_mmoe.features.naming import sanitize_feature_name, sanitize_feature_names
from keras_mmoe.features.encoder import build_feature_encoder, census_feature_encoder

__all__ = ["build_feature_encoder", "census_feature_encoder", "sanitize_feature_name", "sanitize_feature_names"]
