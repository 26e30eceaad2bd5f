"""Data sets: the paper's synthetic task-correlation data and the census-income benchmark."""

from keras_mmoe.data.synthetic import SyntheticData, make_synthetic
from keras_mmoe.data.census import (
    CensusData,
    load_census_income,
    read_census_columns,
    census_labels,
    validation_test_split,
)
from keras_mmoe.data._download import CorruptFileError
