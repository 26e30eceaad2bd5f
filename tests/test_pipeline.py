"""Streaming pipelines from CSV and TFRecord: the raw inputs, splits, shards, statistics and bad data.

Small files (a few hundred rows) written per test; runs under Keras 3 and tf-keras.
"""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe.data import DataError, compute_statistics, count_rows, data_errors, load_spec, make_dataset
from keras_mmoe.data.pipeline import HASH_BUCKETS, parsed_batches
import spec_data
from spec_data import SPEC, make_table, reference_inputs, write_csv, write_shards, write_tfrecord

N = 300


def _spec(tmp_path, **data):
    tables = {**SPEC, "data": {**SPEC["data"], **data}}
    return load_spec(tables, base_dir=str(tmp_path))


def _collect(dataset):
    """All rows of a (features, labels) dataset as one dict of 1-D arrays."""
    out = {}
    for features, labels in dataset:
        for k, v in {**features, **labels}.items():
            assert v.shape[1:] == (1,), (k, v.shape)
            out.setdefault(k, []).append(v.numpy().ravel())
    return {k: np.concatenate(v) for k, v in out.items()}


def _sorted_by_row(columns):
    """Rows sorted by (income, watch) so that datasets read in different orders compare equal."""
    order = np.lexsort((columns["watch"], columns["income"]))
    return {k: v[order] for k, v in columns.items()}


def _assert_same(got, expected):
    assert sorted(got) == sorted(expected)
    for k in expected:
        if expected[k].dtype == object:
            assert got[k].tolist() == expected[k].tolist(), k
        else:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


@pytest.fixture(scope="module")
def table():
    return make_table(N, seed=1)


@pytest.mark.parametrize("fmt, gz, shards", [("csv", False, 1), ("csv", True, 3), ("tfrecord", False, 1),
                                             ("tfrecord", True, 3)])
def test_files_give_the_raw_inputs_of_the_reference(tmp_path, table, fmt, gz, shards):
    paths = write_shards(str(tmp_path), table, shards, fmt, gz)
    spec = _spec(tmp_path, train=[os.path.basename(p) for p in paths], validation_fraction=0.0)
    got = _collect(make_dataset(spec, "train", batch_size=32, shuffle=False))
    _assert_same(_sorted_by_row(got), _sorted_by_row(reference_inputs(table)))
    # dtypes: what a serving request carries
    features, labels = next(iter(make_dataset(spec, "train", batch_size=8)))
    assert {k: v.dtype for k, v in features.items()} == {
        "age": tf.float32, "income": tf.float32, "country": tf.string, "device": tf.int64, "tags": tf.string}
    assert {k: v.dtype for k, v in labels.items()} == {"click": tf.float32, "watch": tf.float32}


def test_checked_path_gives_the_same_inputs_as_the_fast_path(tmp_path, table):
    """Rows with numbers the fast path does not take ('+12', ' 3.5 ') go through the cell-by-cell checks."""
    lines = spec_data.csv_lines(table)
    header = lines[0].split(",")
    at = header.index("income")
    padded = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        cells[at] = f" +{cells[at]} "
        padded.append(",".join(cells))
    (tmp_path / "padded.csv").write_text("\n".join(padded) + "\n")
    spec = _spec(tmp_path, train=["padded.csv"], validation_fraction=0.0)
    _assert_same(_collect(make_dataset(spec, "train", batch_size=32, shuffle=False)), reference_inputs(table))


def test_csv_and_tfrecord_give_the_same_inputs_in_the_same_order(tmp_path, table):
    write_csv(str(tmp_path / "t.csv"), table)
    write_tfrecord(str(tmp_path / "t.tfrecord.gz"), table)
    a = _collect(make_dataset(_spec(tmp_path, train=["t.csv"], validation_fraction=0.0), "train", batch_size=50,
                              shuffle=False))
    b = _collect(make_dataset(_spec(tmp_path, train=["t.tfrecord.gz"], validation_fraction=0.0), "train",
                              batch_size=50, shuffle=False))
    _assert_same(a, b)


def test_batches_are_full_and_shuffling_is_bounded_and_seeded(tmp_path, table):
    write_shards(str(tmp_path), table, 2)
    spec = _spec(tmp_path, train=["train-*.csv"], validation_fraction=0.0, shuffle_buffer=50)
    sizes = [int(tf.shape(f["age"])[0]) for f, _ in make_dataset(spec, "train", batch_size=64)]
    assert sizes == [64, 64, 64, 64, 44]
    first = _collect(make_dataset(spec, "train", batch_size=64, seed=3))
    again = _collect(make_dataset(spec, "train", batch_size=64, seed=3))
    plain = _collect(make_dataset(spec, "train", batch_size=64, shuffle=False))
    np.testing.assert_array_equal(first["income"], again["income"])
    assert not np.array_equal(first["income"], plain["income"])
    np.testing.assert_array_equal(np.sort(first["income"]), np.sort(plain["income"]))


def test_shuffle_permutes_each_window_of_shuffle_buffer_rows_anew_each_pass(tmp_path, table):
    write_csv(str(tmp_path / "train-0.csv"), table)
    spec = _spec(tmp_path, train=["train-0.csv"], validation_fraction=0.0, shuffle_buffer=40)
    read = _collect(make_dataset(spec, "train", batch_size=64, shuffle=False))["income"]
    dataset = make_dataset(spec, "train", batch_size=64, seed=5)
    passes = [_collect(dataset)["income"] for _ in range(2)]  # two epochs of one dataset
    for shuffled in passes:
        assert len(shuffled) == N
        for start in range(0, N, 40):  # the rows of each window of 40 stay in that window
            np.testing.assert_array_equal(np.sort(shuffled[start:start + 40]), np.sort(read[start:start + 40]))
        assert not np.array_equal(shuffled, read)
    assert not np.array_equal(passes[0], passes[1])
    np.testing.assert_array_equal(passes[0], _collect(make_dataset(spec, "train", batch_size=64, seed=5))["income"])


def test_validation_split_is_a_deterministic_hash_of_the_row(tmp_path, table):
    write_csv(str(tmp_path / "train-0.csv"), table)
    spec = _spec(tmp_path, train=["train-0.csv"], validation_fraction=0.25)
    train = _collect(make_dataset(spec, "train", batch_size=64, shuffle=False))
    valid = _collect(make_dataset(spec, "validation", batch_size=64))
    everything = _collect(make_dataset(spec, files=["train-0.csv"], batch_size=64))
    assert len(train["income"]) + len(valid["income"]) == N
    assert not set(train["income"].tolist()) & set(valid["income"].tolist())
    assert 0.15 < len(valid["income"]) / N < 0.35
    # The reference: the same hash of each line decides.
    lines = spec_data.csv_lines(table)[1:]
    buckets = tf.strings.to_hash_bucket_fast(lines, HASH_BUCKETS).numpy()
    expected = np.array(everything["income"])[buckets < round(0.25 * HASH_BUCKETS)]
    np.testing.assert_array_equal(valid["income"], expected)
    # A row moved to another file (or position) stays in its split.
    write_csv(str(tmp_path / "train-0.csv"), table, rows=list(range(N))[::-1])
    moved = _collect(make_dataset(spec, "validation", batch_size=64))
    assert sorted(moved["income"].tolist()) == sorted(valid["income"].tolist())


@pytest.mark.parametrize("files, shards", [(4, 2), (1, 3), (2, 3)])
def test_shards_partition_the_rows(tmp_path, table, files, shards):
    write_shards(str(tmp_path), table, files)
    spec = _spec(tmp_path, train=["train-*.csv"], validation_fraction=0.0)
    parts = [_collect(make_dataset(spec, "train", batch_size=32, num_shards=shards, shard_index=i))["income"]
             for i in range(shards)]
    assert sum(len(p) for p in parts) == N
    assert sorted(np.concatenate(parts).tolist()) == sorted(reference_inputs(table)["income"].tolist())
    if files >= shards:  # by file: each shard reads whole files
        assert len(parts[0]) == sum(len(range(s, N, files)) for s in range(0, files, shards))


def test_input_context_shards_and_divides_the_batch(tmp_path, table):
    write_shards(str(tmp_path), table, 2)
    spec = _spec(tmp_path, train=["train-*.csv"], validation_fraction=0.0)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    batches = [f["income"].shape[0] for f, _ in make_dataset(spec, "train", input_context=context)]
    assert max(batches) == SPEC["train"]["batch_size"] // 2 and sum(batches) == N // 2
    with pytest.raises(ValueError, match=r"`shard_index` must be an integer in \[0, 2\), received: shard_index=2"):
        make_dataset(spec, "train", num_shards=2, shard_index=2)


def test_statistics_match_a_numpy_reference(tmp_path, table):
    write_csv(str(tmp_path / "train-0.csv"), table)
    tables = {**SPEC, "data": {"train": ["train-0.csv"], "validation_fraction": 0.0}}
    tables["features"] = [dict(f) for f in SPEC["features"]]
    tables["features"][2].update(min_count=20)           # country: the rare value is cut
    tables["features"][4].update(max_tokens=4)           # tags: the 3 most frequent tokens (+ OOV)
    spec = load_spec(tables, base_dir=str(tmp_path))
    stats = compute_statistics(spec)
    ref = reference_inputs(table)
    assert stats.rows == N and stats.bad_rows == 0
    age = ref["age"].astype(np.float64)
    present = age[~np.isnan(age)]
    fs = stats.features["age"]
    assert (fs.count, fs.missing) == (present.size, N - present.size)
    assert fs.mean == pytest.approx(present.mean(), rel=1e-6) and fs.variance == pytest.approx(present.var(), rel=1e-5)
    income = ref["income"].astype(np.float64)
    assert stats.features["income"].variance == pytest.approx(income.var(), rel=1e-5)
    countries = [c for c in table["country"] if c]
    counts = {c: countries.count(c) for c in set(countries)}
    expected = sorted([c for c in counts if counts[c] >= 20], key=lambda c: (-counts[c], c))
    assert stats.features["country"].vocabulary == expected
    assert stats.features["country"].distinct == len(counts) and stats.features["country"].missing == N - len(countries)
    devices = [d for d in table["device"] if d is not None]
    dcounts = {d: devices.count(d) for d in set(devices)}
    assert stats.features["device"].vocabulary == sorted(dcounts, key=lambda d: (-dcounts[d], d))
    tokens = [t for ts in table["tags"] for t in ts]
    tcounts = {t: tokens.count(t) for t in set(tokens)}
    assert stats.features["tags"].vocabulary == sorted(tcounts, key=lambda t: (-tcounts[t], t))[:3]
    assert stats.features["tags"].tokens == len(tokens)
    assert stats.features["tags"].missing == sum(1 for ts in table["tags"] if not ts)
    assert stats.labels["click"].mean == pytest.approx(np.mean(table["clicked"]))
    assert stats.labels["watch"].variance == pytest.approx(np.var(table["watch_seconds"]), rel=1e-5)
    assert stats.vocabulary_size(spec, "country") == len(expected) + 1
    # JSON round trip
    assert type(stats).from_dict(stats.to_dict()) == stats


def test_statistics_use_the_train_split_only_and_count_validation_rows(tmp_path, table):
    write_csv(str(tmp_path / "train-0.csv"), table)
    spec = _spec(tmp_path, train=["train-0.csv"], validation_fraction=0.3)
    stats = compute_statistics(spec)
    train = _collect(make_dataset(spec, "train", shuffle=False))
    assert stats.rows == len(train["income"]) and stats.rows + stats.validation_rows == N
    assert stats.features["income"].mean == pytest.approx(train["income"].astype(np.float64).mean(), rel=1e-6)


def test_vocabulary_file_and_hash_bins(tmp_path, table):
    write_csv(str(tmp_path / "train-0.csv"), table)
    (tmp_path / "vocab.txt").write_text("JP\nUS\n\nUS\n")
    tables = {**SPEC, "data": {"train": ["train-0.csv"]}}
    tables["features"] = [dict(f) for f in SPEC["features"]]
    tables["features"][2].update(vocabulary_file="vocab.txt")
    tables["features"][4].update(hash_bins=32)
    spec = load_spec(tables, base_dir=str(tmp_path))
    stats = compute_statistics(spec)
    assert stats.features["country"].vocabulary == ["JP", "US"]
    assert stats.features["tags"].vocabulary is None and stats.vocabulary_size(spec, "tags") == 33
    tables["features"][2].update(vocabulary_file="missing.txt")
    with pytest.raises(FileNotFoundError):
        compute_statistics(load_spec(tables, base_dir=str(tmp_path)))


def test_blank_lines_and_crlf_are_fine(tmp_path, table):
    lines = spec_data.csv_lines(table)
    (tmp_path / "train-0.csv").write_bytes(("\r\n".join(lines[:50] + [""] + lines[50:]) + "\r\n").encode())
    spec = _spec(tmp_path, train=["train-0.csv"], validation_fraction=0.0)
    got = _collect(make_dataset(spec, "train", shuffle=False))
    _assert_same(got, reference_inputs(table))


# ------------------------------------------------------------------------------------ bad data


def _bad_csv(tmp_path, table, row_text, name="train-0.csv"):
    lines = spec_data.csv_lines(table)[:11]  # header + 10 rows
    lines.insert(6, row_text)                 # line 7 of the file
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return _spec(tmp_path, train=[name], validation_fraction=0.0)


BAD_ROWS = [
    ("30,1000,US,101,tv,u1,1,300,extra", "train-0.csv: line 7: expected 8 fields (the header's), found 9"),
    ("30,1000,US", "train-0.csv: line 7: expected 8 fields (the header's), found 3"),
    ('30,1000,U"S,101,tv,u1,1,300', "train-0.csv: line 7: malformed quotes"),
    ("thirty,1000,US,101,tv,u1,1,300", "train-0.csv: line 7: column 'age': cannot parse 'thirty' as a number"),
    ("30,1e999,US,101,tv,u1,1,300", "train-0.csv: line 7: column 'income': '1e999' is not a finite number"),
    ("30,,US,101,tv,u1,1,300",
     "train-0.csv: line 7: column 'income': missing value, and the feature has no `default` in the spec"),
    ("30,NaN,US,101,tv,u1,1,300", "column 'income': missing value, and the feature has no `default`"),
    ("30,1000,US,1x,tv,u1,1,300", "train-0.csv: line 7: column 'device': '1x' is not an integer id"),
    ("30,1000,US,101,tv,u1,2,300",
     "train-0.csv: line 7: column 'clicked' (label of task 'click'): a binary label must be 0 or 1, received '2'"),
    ("30,1000,US,101,tv,u1,,300", "train-0.csv: line 7: column 'clicked' (label of task 'click'): missing label"),
    ("30,1000,US,101,tv,u1,1,", "line 7: column 'watch_seconds' (label of task 'watch'): missing label"),
    ("30,1000,US,101,tv,u1,1,fast", "line 7: column 'watch_seconds' (label of task 'watch'): cannot parse 'fast'"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS, ids=[m.split(": ", 2)[-1][:30] for _, m in BAD_ROWS])
def test_each_bad_row_is_one_line_naming_file_line_and_column(tmp_path, table, row, message):
    spec = _bad_csv(tmp_path, table, row)
    with pytest.raises(DataError) as info:
        compute_statistics(spec)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(os.path.join(str(tmp_path), "train-0.csv"))
    # The pipeline alone says the same (from inside tf.data), through data_errors.
    with pytest.raises(DataError) as info:
        with data_errors(spec):
            _collect(make_dataset(spec, "train", batch_size=4))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_good_variants_are_not_bad(tmp_path, table):
    spec = _bad_csv(tmp_path, table, '  30.5e0 ,1000,"US, east",,,u1,1.0,3e2')
    got = _collect(make_dataset(spec, "train", shuffle=False, batch_size=4))
    i = list(got["watch"]).index(300.0)
    assert got["age"][i] == 30.5 and got["country"][i] == b"US, east" and got["device"][i] == -1
    assert got["tags"][i] == b"" and got["click"][i] == 1.0


def test_max_bad_rows_skips_counts_and_fails_beyond(tmp_path, table):
    lines = spec_data.csv_lines(table)[:41]
    lines[5] = "x,1,US,1,a,u,1,1"
    lines[20] = "1,1,US,1,a,u,7,1"
    (tmp_path / "train-0.csv").write_text("\n".join(lines) + "\n")
    spec = _spec(tmp_path, train=["train-0.csv"], validation_fraction=0.0, max_bad_rows=2)
    stats = compute_statistics(spec)
    assert (stats.rows, stats.bad_rows) == (38, 2)
    assert stats.bad_row_messages[0].endswith("train-0.csv: line 6: column 'age': cannot parse 'x' as a number")
    dataset = make_dataset(spec, "train", batch_size=8)
    assert len(_collect(dataset)["income"]) == 38
    assert len(_collect(dataset)["income"]) == 38  # a second pass (epoch) counts its bad rows afresh
    assert count_rows(spec, files=["train-0.csv"]) == (38, 2)
    tight = _spec(tmp_path, train=["train-0.csv"], validation_fraction=0.0, max_bad_rows=1)
    with pytest.raises(DataError, match=r"more than max_bad_rows=1 malformed rows in \[data\] train \(2 so far\); "
                                        r"the first: .*train-0.csv: line 6: column 'age'"):
        compute_statistics(tight)
    with pytest.raises(DataError, match=r"more than max_bad_rows=1 malformed rows in \[data\] train; the last: "
                                        r".*line 21: column 'clicked'"):
        with data_errors(tight):
            _collect(make_dataset(tight, "train", batch_size=8, shuffle=False))


def test_file_level_errors(tmp_path, table):
    write_csv(str(tmp_path / "train-0.csv"), table)
    with pytest.raises(FileNotFoundError, match=r"spec: \[data\] train: the pattern nothing-\*.csv .* matches no file"):
        make_dataset(_spec(tmp_path, train=["train-0.csv", "nothing-*.csv"]))
    write_csv(str(tmp_path / "other.csv"), table, columns=[c for c in spec_data.COLUMNS if c != "income"])
    with pytest.raises(ValueError, match=r"other.csv: line 1: no column 'income' \(feature 'income'\); the header has: "
                                         r"age, country"):
        make_dataset(_spec(tmp_path, train=["other.csv"]))
    with pytest.raises(ValueError, match=r"other.csv: line 1: the header differs from .*train-0.csv's \(missing "
                                         r"\['income'\], extra \[\]\)"):
        make_dataset(_spec(tmp_path, train=["train-0.csv", "other.csv"]))
    write_tfrecord(str(tmp_path / "t.tfrecord"), table)
    with pytest.raises(ValueError, match="mixes CSV and TFRecord files"):
        make_dataset(_spec(tmp_path, train=["train-0.csv", "t.tfrecord"]))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty.csv: line 1: the file has no header line"):
        make_dataset(_spec(tmp_path, train=["empty.csv"]))
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress("\n".join(spec_data.csv_lines(table)).encode())[:-200])
    with pytest.raises(DataError, match=r"cut.csv.gz: the file is truncated \(the gzip stream ends before its end marker\)"):
        compute_statistics(_spec(tmp_path, train=["cut.csv.gz"]))


def _examples(table, n=10):
    return [spec_data.example(table, i) for i in range(n)]


def _set(example, key, **kind):
    example.features.feature[key].Clear()
    for k, v in kind.items():
        getattr(example.features.feature[key], k).value.extend(v)
    return example


@pytest.mark.parametrize("key, kind, message", [
    ("income", None, "record 7: feature 'income': missing value, and the feature has no `default` in the spec"),
    ("income", {"float_list": [1.0, 2.0]}, "record 7: feature 'income': expected one value, received 2"),
    ("country", {"bytes_list": [b"US", b"JP", b"FR"]}, "record 7: feature 'country': expected one value, received 3"),
    ("clicked", {"int64_list": [3]}, "record 7: feature 'clicked' (label of task 'click'): a binary label must be 0 or 1, received '3"),
    ("clicked", None, "record 7: feature 'clicked' (label of task 'click'): missing label"),
    ("income", {"int64_list": [5]}, "record 7: feature 'income' (numeric) must be a float_list, received a int64_list"),
    ("country", {"int64_list": [5]}, "record 7: feature 'country' (categorical) must be a bytes_list, received a int64_list"),
])
def test_tfrecord_bad_records(tmp_path, table, key, kind, message):
    examples = _examples(table, 300)
    if kind is None:
        del examples[6].features.feature[key]
    else:
        _set(examples[6], key, **kind)
    write_tfrecord(str(tmp_path / "t.tfrecord"), None, examples=examples)
    spec = _spec(tmp_path, train=["t.tfrecord"], validation_fraction=0.0)
    with pytest.raises(DataError) as info:
        compute_statistics(spec)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    # A wrong kind after the records the pipeline looks at first is found when parsing fails.
    examples = _examples(table, 300)
    if kind is not None and key in ("income", "country") and "int64_list" in kind:
        _set(examples[250], key, **kind)
        write_tfrecord(str(tmp_path / "late.tfrecord"), None, examples=examples)
        late = _spec(tmp_path, train=["late.tfrecord"], validation_fraction=0.0)
        with pytest.raises(DataError, match=r"late.tfrecord: record 251: feature '%s' \(\w+\) must be a" % key):
            compute_statistics(late)
        with pytest.raises(DataError, match=r"late.tfrecord: record 251"):
            with data_errors(late):
                _collect(make_dataset(late, "train"))


def test_tfrecord_labels_may_be_float_or_int64(tmp_path, table):
    examples = _examples(table, 20)
    for e in examples:
        _set(e, "clicked", float_list=list(e.features.feature["clicked"].int64_list.value))
    write_tfrecord(str(tmp_path / "t.tfrecord"), None, examples=examples)
    got = _collect(make_dataset(_spec(tmp_path, train=["t.tfrecord"], validation_fraction=0.0), shuffle=False))
    np.testing.assert_array_equal(got["click"], reference_inputs(table, range(20))["click"])


def test_parsed_batches_extra_columns(tmp_path, table):
    write_csv(str(tmp_path / "train-0.csv"), table)
    write_tfrecord(str(tmp_path / "t.tfrecord"), table)
    spec = _spec(tmp_path, train=["train-0.csv"])
    for files in (["train-0.csv"], ["t.tfrecord"]):
        users = np.concatenate([b["extras"]["user"].numpy() for b in parsed_batches(
            spec, files=files, batch_size=64, extra_columns=["user"])])
        assert users.tolist() == [u.encode() for u in table["user"]]
