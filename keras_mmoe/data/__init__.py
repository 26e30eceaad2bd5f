"""Data sets: the paper's synthetic task-correlation data and the census-income benchmark."""

from keras_mmoe.data.synthetic import SyntheticData, make_synthetic
