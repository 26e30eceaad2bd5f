"""Data: your own files described by a spec, the paper's synthetic data and the census-income benchmark.

Your own data: :func:`load_spec` (TOML / JSON), :func:`compute_statistics` (one streaming pass
over the train files), :func:`make_dataset` (streaming ``tf.data`` of ``(features, labels)``
from CSV or TFRecord files), :func:`infer_spec` (a starting spec from a sample of the files).
"""

from keras_mmoe.data.synthetic import SyntheticData, make_synthetic
from keras_mmoe.data.census import (
    CensusData,
    load_census_income,
    read_census_columns,
    census_labels,
    validation_test_split,
)
from keras_mmoe.data._download import CorruptFileError
from keras_mmoe.data.spec import (
    DataSpec,
    FeatureSpec,
    Spec,
    SpecError,
    TaskSpec,
    TrainSpec,
    load_spec,
    parse_spec,
    spec_to_toml,
)
from keras_mmoe.data.pipeline import DataError, data_errors, make_dataset, resolve_source
from keras_mmoe.data.statistics import Statistics, compute_statistics, count_rows
from keras_mmoe.data.infer import infer_spec

__all__ = [
    "CensusData", "CorruptFileError", "DataError", "DataSpec", "FeatureSpec", "Spec", "SpecError", "Statistics",
    "SyntheticData", "TaskSpec", "TrainSpec", "census_labels", "compute_statistics", "count_rows", "data_errors",
    "infer_spec", "load_census_income", "load_spec", "make_dataset", "make_synthetic", "parse_spec",
    "read_census_columns", "resolve_source", "spec_to_toml", "validation_test_split",
]
