"""The UCI Census-Income (KDD) benchmark of the MMoE paper (Ma et al., KDD 2018, section 6.3).

Files: ``<data_dir>/census-income/census-income.data.gz`` (199,523 training rows) and
``census-income.test.gz`` (99,762 rows), the untouched UCI originals. ``data_dir`` is the
argument, else the environment variable ``KERAS_MMOE_DATA_DIR``, else ``~/.keras_mmoe/data``.
Absent files are downloaded from ``base_url`` (the UCI repository by default) into that
directory; a file enters the cache only after the sha256 of its decompressed content matched
(see :mod:`keras_mmoe.data._download`), and files read in full are verified on every load.

Paper setup, reproduced here:

- train = the 199,523 rows of ``census-income.data``; the 99,762 rows of ``census-income.test``
  are permuted at random with ``seed`` and split 1:1 into validation and test (49,881 each);
- task group 1: ``income`` (income > 50K, main) and ``marital`` (marital status "Never
  married", auxiliary); task group 2: ``education`` (at least college, main) and ``marital``;
- education and marital status are removed from the inputs; the instance weight is never an
  input (it is kept in :attr:`CensusData.instance_weights` for weighted analyses).

"At least college" is not defined by the paper; here it is Bachelors, Masters, Doctorate, Prof
school and both Associates degrees ("Some college but no degree" is not), the set whose label
correlation is closest to the paper's. Pearson correlation of the two labels, measured with this
module on the whole training file (paper values in brackets):

- group 1 (income, marital):    -0.1782  (paper |r| 0.1768; test file -0.1787)
- group 2 (education, marital): -0.2400  (paper |r| 0.2373; test file -0.2376)

(Weighted by the instance weight: -0.1815 and -0.2350, so the paper's figures are not weighted
ones either; no variant tried here reproduces 0.1768 exactly.)

Inputs: 7 continuous features (float32) and 31 nominal ones (strings; the UCI file has 33
nominal attributes, minus education and marital status). The numerically coded "detailed
industry recode", "detailed occupation recode", "own business or self employed", "veterans
benefits" and "year" are nominal in the UCI description and are kept as strings. Values are
stripped of the space after each comma (and of the trailing space of the two UCI values
"Handlers equip cleaners etc " and "Foreign born- Not a citizen of U S "). Feature keys are the
UCI attribute names sanitized by :func:`keras_mmoe.features.sanitize_feature_name` (``"class of
worker"`` -> ``"class_of_worker"``); :attr:`CensusData.uci_names` maps them back.

Parsing is plain Python (``str.split`` of the whole text, then one NumPy reshape), faster here
than ``csv`` and than ``tf.strings.split``: reading both full files (decompress, verify, parse)
took 3.2-6 s and the whole :func:`load_census_income` 6-11 s on a 2-core machine shared with
other jobs.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from keras_mmoe._validation import check_positive_int, check_seed
from keras_mmoe.data._download import CorruptFileError, download_verified, read_gzip_verified
from keras_mmoe.features.naming import sanitize_feature_names

#: Where the UCI repository serves the files (``<base_url>/census-income.data.gz``).
UCI_BASE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld"
#: Environment variable naming the data directory.
DATA_DIR_ENV = "KERAS_MMOE_DATA_DIR"
#: Data directory used when neither the argument nor the environment variable gives one.
DEFAULT_DATA_DIR = os.path.join("~", ".keras_mmoe", "data")
#: Sub-directory of the data directory holding the census files.
CENSUS_SUBDIR = "census-income"


@dataclass(frozen=True)
class _CensusFile:
    filename: str
    sha256: str  # of the decompressed content
    size: int  # decompressed bytes
    num_rows: int


CENSUS_FILES = {
    "train": _CensusFile(
        "census-income.data.gz",
        "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86",
        103_874_469,
        199_523,
    ),
    "test": _CensusFile(
        "census-income.test.gz",
        "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c",
        51_918_813,
        99_762,
    ),
}

#: The 42 columns of the UCI files, in file order (attribute list of census-income.names, with
#: the instance weight in its place and the income label last).
COLUMNS = (
    "age",
    "class of worker",
    "detailed industry recode",
    "detailed occupation recode",
    "education",
    "wage per hour",
    "enroll in edu inst last wk",
    "marital stat",
    "major industry code",
    "major occupation code",
    "race",
    "hispanic origin",
    "sex",
    "member of a labor union",
    "reason for unemployment",
    "full or part time employment stat",
    "capital gains",
    "capital losses",
    "dividends from stocks",
    "tax filer stat",
    "region of previous residence",
    "state of previous residence",
    "detailed household and family stat",
    "detailed household summary in household",
    "instance weight",
    "migration code-change in msa",
    "migration code-change in reg",
    "migration code-move within reg",
    "live in this house 1 year ago",
    "migration prev res in sunbelt",
    "num persons worked for employer",
    "family members under 18",
    "country of birth father",
    "country of birth mother",
    "country of birth self",
    "citizenship",
    "own business or self employed",
    "fill inc questionnaire for veteran's admin",
    "veterans benefits",
    "weeks worked in year",
    "year",
    "income",
)
CONTINUOUS_COLUMNS = (
    "age",
    "wage per hour",
    "capital gains",
    "capital losses",
    "dividends from stocks",
    "num persons worked for employer",
    "weeks worked in year",
)
WEIGHT_COLUMN = "instance weight"
LABEL_COLUMN = "income"
EDUCATION_COLUMN = "education"
MARITAL_COLUMN = "marital stat"
#: The 33 nominal UCI attributes (education and marital status among them).
NOMINAL_COLUMNS = tuple(
    c for c in COLUMNS if c not in CONTINUOUS_COLUMNS and c not in (WEIGHT_COLUMN, LABEL_COLUMN)
)
#: Columns that are never model inputs: labels or the sources of labels, and the instance weight.
NON_INPUT_COLUMNS = (EDUCATION_COLUMN, MARITAL_COLUMN, WEIGHT_COLUMN, LABEL_COLUMN)

INCOME_VALUES = {"- 50000.": 0.0, "50000+.": 1.0}
NEVER_MARRIED = "Never married"
#: Education values counted as "at least college" (label 1 of the group-2 main task).
AT_LEAST_COLLEGE = frozenset(
    {
        "Associates degree-occup /vocational",
        "Associates degree-academic program",
        "Bachelors degree(BA AB BS)",
        "Masters degree(MA MS MEng MEd MSW MBA)",
        "Prof school degree (MD DDS DVM LLB JD)",
        "Doctorate degree(PhD EdD)",
    }
)
EDUCATION_VALUES = AT_LEAST_COLLEGE | {
    "Children",
    "Less than 1st grade",
    "1st 2nd 3rd or 4th grade",
    "5th or 6th grade",
    "7th and 8th grade",
    "9th grade",
    "10th grade",
    "11th grade",
    "12th grade no diploma",
    "High school graduate",
    "Some college but no degree",
}
MARITAL_VALUES = frozenset(
    {
        "Never married",
        "Married-civilian spouse present",
        "Married-spouse absent",
        "Married-A F spouse present",
        "Separated",
        "Divorced",
        "Widowed",
    }
)
#: Task names per task group, main task first.
TASK_GROUPS = {1: ("income", "marital"), 2: ("education", "marital")}


# ---------------------------------------------------------------------------------------------
# Files


def census_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """The data directory: ``data_dir``, else ``$KERAS_MMOE_DATA_DIR``, else ``~/.keras_mmoe/data``."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    if not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"`data_dir` must be a path, received: data_dir={data_dir!r}")
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def _locate(split, data_dir, download, base_url):
    """Path of one file, downloading it when absent; returns (path, verified content or None)."""
    spec = CENSUS_FILES[split]
    path = os.path.join(data_dir, CENSUS_SUBDIR, spec.filename)
    if os.path.exists(path):
        return path, None
    if not download:
        raise FileNotFoundError(
            f"{spec.filename} not found: expected it at {path} (data_dir={data_dir!r}); pass download=True, "
            f"set `data_dir` or ${DATA_DIR_ENV} to a directory holding {CENSUS_SUBDIR}/{spec.filename}"
        )
    url = base_url.rstrip("/") + "/" + spec.filename
    content = download_verified(url, path, spec.sha256, spec.size)
    return path, content


def _read_text(path, spec, max_rows, verify, content):
    if content is None and max_rows is None:
        if verify:
            content = read_gzip_verified(path, spec.sha256, spec.size)
        else:
            try:
                with open(path, "rb") as f:
                    content = gzip.decompress(f.read())
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
                raise CorruptFileError(f"{path} is truncated or not a valid gzip file: {exc}") from exc
    if content is not None:
        text = content.decode("ascii")
        if max_rows is not None:
            end = -1
            for _ in range(max_rows):
                end = text.find("\n", end + 1)
                if end < 0:
                    break
            text = text if end < 0 else text[: end + 1]
        return text
    # A prefix only: stream the first rows (the content checksum needs the whole file).
    try:
        with gzip.open(path, "rb") as f:
            lines = list(itertools.islice(io.TextIOWrapper(f, encoding="ascii", newline="\n"), max_rows))
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is truncated or not a valid gzip file: {exc}") from exc
    return "".join(lines)


def _parse(text, path):
    """Parses the UCI text into ``{column: array}`` (float32 for numbers, str objects otherwise)."""
    # Two UCI values end with a space ("Handlers equip cleaners etc , ..."): strip it.
    text = text.replace(" , ", ", ")
    if text and not text.endswith("\n"):
        text += "\n"
    num_rows = text.count("\n")
    num_cols = len(COLUMNS)
    fields = text.replace("\n", ", ").split(", ") if num_rows else [""]
    fields.pop()  # the empty string after the last row's ", "
    if len(fields) != num_rows * num_cols:
        raise CorruptFileError(
            f"{path}: expected {num_cols} fields per row (comma and space separated), received "
            f"{len(fields):,} fields in {num_rows:,} rows"
        )
    table = np.array(fields, dtype=object).reshape(num_rows, num_cols)
    columns = {}
    for i, name in enumerate(COLUMNS):
        col = table[:, i]
        if name in CONTINUOUS_COLUMNS or name == WEIGHT_COLUMN:
            try:
                col = col.astype(np.float32)
            except ValueError as exc:
                raise CorruptFileError(f"{path}: column {name!r} holds a non-numeric value ({exc})") from exc
        columns[name] = col
    unknown = set(columns[LABEL_COLUMN].tolist()) - set(INCOME_VALUES)
    if unknown:
        raise CorruptFileError(
            f"{path}: the label column holds {sorted(unknown)[:5]!r}, expected only {sorted(INCOME_VALUES)!r}"
        )
    return columns


def read_census_columns(data_dir: str | os.PathLike | None = None, *, max_rows: int | None = None,
                        download: bool = True, base_url: str = UCI_BASE_URL, verify: bool = True) -> dict:
    """Reads the two UCI files into raw columns (all 42, labels not yet derived).

    Args:
        data_dir: directory holding ``census-income/census-income.{data,test}.gz`` (see
            :func:`census_data_dir`).
        max_rows: read only the first ``max_rows`` rows of each file (quick runs and tests). The
            content checksum needs the whole file, so it is checked only when a file is read in
            full or downloaded.
        download: fetch absent files from ``base_url``.
        base_url: where the files are served, ``<base_url>/census-income.data.gz`` (``http(s)://``
            or ``file://``).
        verify: check the content sha256 of files read in full.

    Returns:
        ``{"train": columns, "test": columns}``, each ``{UCI column name: np.ndarray (rows,)}``:
        float32 for the continuous columns and the instance weight, Python ``str`` objects for
        the rest (stripped of surrounding spaces; the label keeps its final period).
    """
    if max_rows is not None and check_positive_int("max_rows", max_rows) < 2:
        raise ValueError(f"`max_rows` must be None or an integer >= 2, received: max_rows={max_rows!r}")
    data_dir = census_data_dir(data_dir)
    out = {}
    for split in ("train", "test"):
        path, content = _locate(split, data_dir, download, base_url)
        text = _read_text(path, CENSUS_FILES[split], max_rows, verify, content)
        out[split] = _parse(text, path)
    return out


# ---------------------------------------------------------------------------------------------
# Labels


def census_labels(columns: dict, group: int) -> dict:
    """Labels of task group ``group`` from raw columns: ``{task name: float32 (rows, 1)}`` of 0/1.

    - ``income``: 1 where the income label is ``50000+.`` (income above 50K);
    - ``marital``: 1 where marital status is ``Never married``;
    - ``education``: 1 where education is in :data:`AT_LEAST_COLLEGE`.
    """
    tasks = _check_group(group)
    income = columns[LABEL_COLUMN]
    education = columns[EDUCATION_COLUMN]
    marital = columns[MARITAL_COLUMN]
    for name, values, known in ((EDUCATION_COLUMN, education, EDUCATION_VALUES), (MARITAL_COLUMN, marital, MARITAL_VALUES)):
        unknown = set(values.tolist()) - known
        if unknown:
            raise ValueError(f"Column {name!r} holds values outside the UCI description: {sorted(unknown)!r}")
    labels = {
        "income": np.fromiter((INCOME_VALUES[v] for v in income), dtype=np.float32, count=len(income)),
        "marital": (marital == NEVER_MARRIED).astype(np.float32),
        "education": np.isin(education, list(AT_LEAST_COLLEGE)).astype(np.float32),
    }
    return {task: labels[task][:, None] for task in tasks}


def label_correlation(labels: dict) -> float:
    """Pearson correlation of the two labels of a ``{task: (rows, 1)}`` dict (NaN if one is constant)."""
    a, b = (np.ravel(v).astype(np.float64) for v in labels.values())
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.corrcoef(a, b)[0, 1])


def validation_test_split(num_rows: int, seed: int = 0) -> tuple:
    """The paper's random 1:1 split of the test file: ``(validation rows, test rows)`` index arrays.

    The rows are permuted with ``np.random.default_rng(seed)``; validation takes the first half
    (rounded down), test the rest: 49,881 and 49,881 of the 99,762 test rows.
    """
    check_positive_int("num_rows", num_rows)
    order = np.random.default_rng(seed).permutation(num_rows)
    half = num_rows // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _check_group(group):
    if isinstance(group, bool) or group not in TASK_GROUPS:
        raise ValueError(f"`group` must be 1 (income, marital) or 2 (education, marital), received: group={group!r}")
    return TASK_GROUPS[group]


# ---------------------------------------------------------------------------------------------
# The data set


@dataclass
class CensusData:
    """One loading of the census-income benchmark: arrays, facts and ``tf.data`` datasets.

    Attributes:
        group: the task group (1 or 2).
        task_names: label keys, main task first (``("income", "marital")`` or
            ``("education", "marital")``).
        continuous_features: input keys of the 7 continuous features (float32).
        nominal_features: input keys of the 31 nominal features (strings).
        uci_names: ``{input key: UCI attribute name}``.
        features: ``{split: {input key: np.ndarray (rows, 1)}}`` for ``"train"``,
            ``"validation"``, ``"test"``: float32 or ``str`` objects. ``features["train"]`` is
            what the feature encoder adapts on. (Keras 3 ``predict`` rejects NumPy string arrays:
            feed the datasets, or convert with ``tf.constant``.)
        labels: ``{split: {task: float32 np.ndarray (rows, 1)}}`` of 0/1.
        instance_weights: ``{split: float32 np.ndarray (rows,)}``, the UCI weights (never an input).
        num_rows: ``{split: rows}``.
        label_correlation: Pearson correlation of the two labels on the training split.
        batch_size, seed, max_rows: the loader's arguments (``seed`` split validation from test).
        train, validation, test: batched ``tf.data.Dataset`` of ``(features, labels)``; each
            feature and label has shape ``(batch, 1)``; train is shuffled (reshuffled each epoch).
    """

    group: int
    task_names: tuple
    continuous_features: tuple
    nominal_features: tuple
    uci_names: dict
    features: dict
    labels: dict
    instance_weights: dict
    num_rows: dict
    label_correlation: float
    batch_size: int
    seed: int
    max_rows: int | None = None
    train: object = field(default=None, repr=False)
    validation: object = field(default=None, repr=False)
    test: object = field(default=None, repr=False)

    @property
    def main_task(self) -> str:
        return self.task_names[0]

    @property
    def feature_names(self) -> tuple:
        """All input keys: the continuous ones, then the nominal ones."""
        return tuple(self.continuous_features) + tuple(self.nominal_features)

    def dataset(self, split: str, batch_size: int | None = None, shuffle: bool | None = None, seed: int | None = None,
                repeat: bool = False) -> tf.data.Dataset:
        """A new batched ``tf.data.Dataset`` of ``(features, labels)`` for ``split``.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
            batch_size: default: the loader's ``batch_size``.
            shuffle: default: True for ``"train"`` only.
            seed: shuffle seed (default: the loader's seed).
            repeat: repeat forever.
        """
        if split not in self.features:
            raise ValueError(f"`split` must be one of {sorted(self.features)}, received: split={split!r}")
        batch_size = self.batch_size if batch_size is None else batch_size
        check_positive_int("batch_size", batch_size)
        shuffle = (split == "train") if shuffle is None else shuffle
        # Shuffle and batch row indices, then gather whole batches: one vectorized gather per
        # column and batch instead of per-row slicing of 40 components (one pass over the full
        # train split: 5.4 s instead of 28.6 s, measured).
        features = {k: tf.constant(v) for k, v in self.features[split].items()}
        labels = {k: tf.constant(v) for k, v in self.labels[split].items()}
        ds = tf.data.Dataset.range(self.num_rows[split])
        if shuffle:
            ds = ds.shuffle(
                self.num_rows[split], seed=self.seed if seed is None else seed, reshuffle_each_iteration=True
            )
        if repeat:
            ds = ds.repeat()

        def gather(rows):
            take = lambda t: tf.gather(t, rows)  # noqa: E731
            return tf.nest.map_structure(take, features), tf.nest.map_structure(take, labels)

        return ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def load_census_income(
    data_dir: str | os.PathLike | None = None,
    group: int = 1,
    *,
    batch_size: int = 1024,
    seed: int = 0,
    max_rows: int | None = None,
    download: bool = True,
    base_url: str = UCI_BASE_URL,
    verify: bool = True,
) -> CensusData:
    """Loads census-income as in the MMoE paper; returns :class:`CensusData`.

    Args:
        data_dir: directory holding ``census-income/census-income.{data,test}.gz``; default
            ``$KERAS_MMOE_DATA_DIR``, else ``~/.keras_mmoe/data``. Absent files are downloaded there.
        group: task group 1 (``income``, ``marital``) or 2 (``education``, ``marital``).
        batch_size: batch size of the three datasets.
        seed: seed of the random 1:1 validation/test split of the test file and of the train shuffle.
        max_rows: read only the first ``max_rows`` rows of each file (train gets ``max_rows`` rows,
            validation and test half of ``max_rows`` each); the content checksum is then not
            checked (it needs the whole file).
        download: download absent files from ``base_url``.
        base_url: where the files are served; ``<base_url>/census-income.data.gz``.
        verify: check the content sha256 of files read in full.

    Example:

    >>> data = load_census_income(group=1, max_rows=2000)
    >>> data.task_names, data.num_rows
    (('income', 'marital'), {'train': 2000, 'validation': 1000, 'test': 1000})
    >>> features, labels = next(iter(data.train))

    At full size: train 199,523 rows, validation 49,881, test 49,881.
    """
    tasks = _check_group(group)
    check_positive_int("batch_size", batch_size)
    if seed is None:
        raise ValueError("`seed` must be a non-negative integer (it fixes the validation/test split), received: seed=None")
    check_seed("seed", seed)
    raw = read_census_columns(data_dir, max_rows=max_rows, download=download, base_url=base_url, verify=verify)

    validation_index, test_index = validation_test_split(len(raw["test"][LABEL_COLUMN]), seed)
    index = {"validation": validation_index, "test": test_index}

    input_columns = [c for c in COLUMNS if c not in NON_INPUT_COLUMNS]
    keys = sanitize_feature_names(input_columns)
    features, labels, weights = {}, {}, {}
    for split in ("train", "validation", "test"):
        cols = raw["train"] if split == "train" else {k: v[index[split]] for k, v in raw["test"].items()}
        features[split] = {keys[c]: cols[c][:, None] for c in input_columns}
        labels[split] = census_labels(cols, group)
        weights[split] = cols[WEIGHT_COLUMN]
    data = CensusData(
        group=group,
        task_names=tasks,
        continuous_features=tuple(keys[c] for c in input_columns if c in CONTINUOUS_COLUMNS),
        nominal_features=tuple(keys[c] for c in input_columns if c not in CONTINUOUS_COLUMNS),
        uci_names={v: k for k, v in keys.items()},
        features=features,
        labels=labels,
        instance_weights=weights,
        num_rows={split: len(weights[split]) for split in weights},
        label_correlation=label_correlation(labels["train"]),
        batch_size=batch_size,
        seed=seed,
        max_rows=max_rows,
    )
    data.train = data.dataset("train")
    data.validation = data.dataset("validation")
    data.test = data.dataset("test")
    return data
