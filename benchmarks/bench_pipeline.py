"""The spec pipeline on a ranking-like table: throughput, training feed, peak memory.

    python benchmarks/bench_pipeline.py write --rows 200000 --shards 8 --out DATA/rank200k
    python benchmarks/bench_pipeline.py pipeline --data DATA/rank200k          # (a) rows/s, CSV and TFRecord
    python benchmarks/bench_pipeline.py fit --data DATA/rank200k [--format tfrecord]  # (b) epoch: pipeline vs in-memory
    python benchmarks/bench_pipeline.py write --rows 1000000 --shards 4 --out DATA/rank1m --formats csv
    python benchmarks/bench_pipeline.py write --rows 5000000 --shards 20 --out DATA/rank5m --formats csv
    python benchmarks/bench_pipeline.py rss --spec DATA/rank1m/spec-csv.toml --spec DATA/rank5m/spec-csv.toml  # (c)

(c) runs ``python -m keras_mmoe.cli.main train --spec SPEC --epochs 1 --out-dir TMP`` in a fresh
process per spec (``--via workflow``: ``keras_mmoe.workflow.train`` instead) and reads the
process's peak RSS from the kernel when it ends. Keep DATA outside the repository.

The table: 10 numeric columns (3 with 5% empty cells), 20 categorical columns with cardinalities
10 ... 100,000 (geometric; skewed draws; 2% empty), 1 multi-valued column (0-5 tokens of 1,000,
joined by ``|``), a click label (0/1) and a watch-time label (seconds). Written as CSV.gz and
TFRecord.gz (tf.train.Example) shards with a spec for each. Timed runs alternate the candidate
and its baseline in one process and report the median.
"""

import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import time

import warnings

import numpy as np

warnings.filterwarnings("ignore", message="Your input ran out of data")
warnings.filterwarnings("ignore", message="`shuffle=True` was passed")

NUMERIC = 10
CATEGORICAL = 20
CARDINALITIES = np.geomspace(10, 100_000, CATEGORICAL).round().astype(int)
TOKENS = 1000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _columns():
    return ([f"n{i}" for i in range(NUMERIC)] + [f"c{j}" for j in range(CATEGORICAL)]
            + ["tags", "clicked", "watch_seconds"])


def make_chunk(n, seed):
    """One chunk of the table: {column: list of cell strings} (empty = missing) and the token lists."""
    rng = np.random.default_rng(seed)
    cells, values = {}, {}
    for i in range(NUMERIC):
        x = rng.normal(i, 1 + i, n) if i % 2 else rng.lognormal(2, 0.7, n)
        values[f"n{i}"] = x
        text = [f"{v:.4g}" for v in x]
        if i < 3:
            for k in np.flatnonzero(rng.random(n) < 0.05):
                text[k] = ""
        cells[f"n{i}"] = text
    for j, card in enumerate(CARDINALITIES):
        ids = np.minimum((card * rng.random(n) ** 2).astype(int), card - 1)  # skewed: small ids frequent
        values[f"c{j}"] = ids
        text = [f"v{v}" for v in ids]
        for k in np.flatnonzero(rng.random(n) < 0.02):
            text[k] = ""
        cells[f"c{j}"] = text
    counts = rng.integers(0, 6, n)
    tags = [[f"t{t}" for t in rng.integers(0, TOKENS, c)] for c in counts]
    cells["tags"] = ["|".join(t) for t in tags]
    logit = 0.3 * values["n1"] - 0.2 * values["n3"] / 4 + (values["c0"] < 3) * 0.8 - 1.0
    clicked = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    watch = np.maximum(0, 200 + 30 * values["n5"] / 6 + 50 * (values["c2"] % 5) + rng.normal(0, 40, n))
    cells["clicked"] = [str(c) for c in clicked]
    cells["watch_seconds"] = [f"{w:.1f}" for w in watch]
    return cells, tags


def _write_csv(path, cells):
    columns = _columns()
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=4) as f:
        f.write(",".join(columns) + "\n")
        f.write("\n".join(map(",".join, zip(*(cells[c] for c in columns)))) + "\n")


def _write_tfrecord(path, cells, tags):
    import tensorflow as tf

    n = len(cells["clicked"])
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for r in range(n):
            feature = {}
            for i in range(NUMERIC):
                v = cells[f"n{i}"][r]
                if v:
                    feature[f"n{i}"] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
            for j in range(CATEGORICAL):
                v = cells[f"c{j}"][r]
                if v:
                    feature[f"c{j}"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
            feature["tags"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode() for t in tags[r]]))
            feature["clicked"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(cells["clicked"][r])]))
            feature["watch_seconds"] = tf.train.Feature(
                float_list=tf.train.FloatList(value=[float(cells["watch_seconds"][r])]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def spec_tables(pattern, epochs=1):
    features = [{"name": f"n{i}", "type": "numeric", "normalize": True, **(
        {"default": 0.0, "missing_indicator": True} if i < 3 else {})} for i in range(NUMERIC)]
    features += [{"name": f"c{j}", "type": "categorical", "max_tokens": 100_000, "embedding_dim": 8}
                 for j in range(CATEGORICAL)]
    features.append({"name": "tags", "type": "multi_categorical", "embedding_dim": 8})
    return {
        "data": {"train": [pattern], "validation_fraction": 0.05},
        "features": features,
        "tasks": [{"name": "click", "label": "clicked", "type": "binary"},
                  {"name": "watch", "label": "watch_seconds", "type": "regression", "normalize_label": True}],
        "model": {"architecture": "mmoe", "num_experts": 8, "expert_units": [64, 32], "tower_units": [16]},
        "train": {"epochs": epochs, "batch_size": 1024, "learning_rate": 0.001},
    }


def write(args):
    from keras_mmoe.data import spec_to_toml

    formats = args.formats.split(",")
    for fmt in formats:
        os.makedirs(os.path.join(args.out, fmt), exist_ok=True)
    per_shard = -(-args.rows // args.shards)
    start = time.perf_counter()
    for s in range(args.shards):
        n = min(per_shard, args.rows - s * per_shard)
        cells, tags = make_chunk(n, seed=1000 + s)
        if "csv" in formats:
            _write_csv(os.path.join(args.out, "csv", f"part-{s:03d}.csv.gz"), cells)
        if "tfrecord" in formats:
            _write_tfrecord(os.path.join(args.out, "tfrecord", f"part-{s:03d}.tfrecord.gz"), cells, tags)
        print(f"shard {s + 1}/{args.shards}: {n} rows ({time.perf_counter() - start:.0f} s)", flush=True)
    for fmt in formats:
        pattern = f"{fmt}/part-*.{'csv' if fmt == 'csv' else 'tfrecord'}.gz"
        with open(os.path.join(args.out, f"spec-{fmt}.toml"), "w") as f:
            f.write(spec_to_toml(spec_tables(pattern)))
    print(f"wrote {args.rows} rows in {args.shards} shards per format to {args.out}")


def _machine():
    import platform

    import tensorflow as tf

    from keras_mmoe import KERAS_FLAVOR

    load = os.getloadavg()
    return (f"{platform.machine()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}, {KERAS_FLAVOR}; "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def pipeline(args):
    """(a) rows/s of make_dataset alone (parse + checks + shuffle + batch), CSV and TFRecord alternating."""
    from keras_mmoe.data import load_spec, make_dataset

    specs = {fmt: load_spec(os.path.join(args.data, f"spec-{fmt}.toml")) for fmt in ("csv", "tfrecord")}
    times = {fmt: [] for fmt in specs}
    cpu = {fmt: [] for fmt in specs}
    rows = {}
    print(_machine())
    for repeat in range(args.repeats):
        for fmt, spec in specs.items():
            dataset = make_dataset(spec, "train")
            start, start_cpu = time.perf_counter(), time.process_time()
            count = 0
            for features, _ in dataset:
                count += int(features["n0"].shape[0])
            times[fmt].append(time.perf_counter() - start)
            cpu[fmt].append(time.process_time() - start_cpu)
            rows[fmt] = count
            print(f"  repeat {repeat + 1} {fmt}: {count} rows in {times[fmt][-1]:.2f} s, "
                  f"{cpu[fmt][-1]:.2f} CPU s", flush=True)
    result = {fmt: {"rows": rows[fmt], "median_s": statistics.median(t), "min_s": min(t),
                    "rows_per_s_median": rows[fmt] / statistics.median(t), "rows_per_s_best": rows[fmt] / min(t),
                    "cpu_us_per_row": 1e6 * statistics.median(cpu[fmt]) / rows[fmt]}
              for fmt, t in times.items()}
    print(json.dumps(result, indent=1))


def _floor_feed(spec, element_spec, steps):
    """The least any tf.data pipeline does with these files: read (interleaved by file, gunzipped),
    batch, one ``tf.io.decode_csv`` / ``tf.io.parse_example`` per batch with a default for every
    missing value, prefetch. No per-row checks, no hash split (all rows, not 95%), no shuffle:
    what the format itself costs, the floor under make_dataset's cost."""
    import tensorflow as tf

    from keras_mmoe.data import pipeline as _pipeline

    features, labels = element_spec
    source = _pipeline.resolve_source(spec, "train")
    batch = spec.train.batch_size
    from keras_mmoe.data import files as _files

    files = tf.data.Dataset.from_tensor_slices((source.files, [_files.compression_type(p) for p in source.files]))

    def default(dtype):
        return {tf.string: "", tf.int64: -1}.get(dtype, float("nan"))

    if source.format == "csv":
        columns = {f.key: (f.name, features[f.name].dtype) for f in spec.features}
        columns.update({t.label: (t.name, labels[t.name].dtype) for t in spec.tasks})
        keys = [c for c in source.header if c in columns]
        select = [source.header.index(c) for c in keys]
        defaults = [tf.constant([default(columns[c][1])], columns[c][1]) for c in keys]

        def read(path, compression):
            return tf.data.TextLineDataset(path, compression_type=compression, buffer_size=1 << 20).skip(1)

        def parse(lines):
            values = dict(zip(keys, tf.io.decode_csv(lines, defaults, select_cols=select)))
            return ({f.name: values[f.key][:, None] for f in spec.features},
                    {t.name: values[t.label][:, None] for t in spec.tasks})
    else:
        kinds = {"float": tf.float32, "int64": tf.int64, "bytes": tf.string}
        parse_spec = {}
        for f in spec.features:
            dtype = features[f.name].dtype
            parse_spec[f.key] = (tf.io.RaggedFeature(tf.string) if f.type == "multi_categorical"
                                 else tf.io.FixedLenFeature([1], dtype, default_value=[default(dtype)]))
        for t in spec.tasks:
            parse_spec[t.label] = tf.io.FixedLenFeature([1], kinds[source.kinds[t.label]])

        def read(path, compression):
            return tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=1 << 20)

        def parse(records):
            values = tf.io.parse_example(records, parse_spec)
            out = {}
            for f in spec.features:
                value = values[f.key]
                if f.type == "multi_categorical":
                    value = tf.strings.reduce_join(value, axis=1, separator=f.separator)[:, None]
                out[f.name] = value
            return out, {t.name: tf.cast(values[t.label], tf.float32) for t in spec.tasks}

    rows = files.interleave(read, cycle_length=min(8, len(source.files)), num_parallel_calls=tf.data.AUTOTUNE)
    # filter: of unknown length, as the pipeline is
    batches = rows.batch(batch).map(parse, num_parallel_calls=tf.data.AUTOTUNE).filter(lambda f, l: True)
    return batches.take(steps).prefetch(tf.data.AUTOTUNE)


def fit(args):
    """(b) one training epoch fed by the pipeline vs by in-memory tensors: the same compiled model,
    batch size and number of steps.

    The in-memory feed holds the pipeline's own output (parsed, checked ``(batch, 1)`` tensors, raw
    as the model takes them) concatenated; each step slices one batch out of it: no reading, no
    parsing, no per-row work. Both feeds yield the same element spec (batch dimension unknown), so
    one traced train step serves both. Each feed runs ``full = rows // batch_size`` steps, so the
    pipeline's last partial batch is left out on both sides."""
    import tensorflow as tf

    from keras_mmoe import workflow
    from keras_mmoe._keras import keras
    from keras_mmoe.data import compute_statistics, load_spec, make_dataset

    spec = load_spec(os.path.join(args.data, f"spec-{args.format}.toml"))
    print(_machine())
    stats = compute_statistics(spec)
    keras.utils.set_random_seed(0)
    model = workflow.compile_model(workflow.build_model(spec, stats), spec, stats)
    # The in-memory copy: every batch the pipeline yields, concatenated.
    features, labels = {}, {}
    for f, l in make_dataset(spec, "train", shuffle=False):
        for k, v in f.items():
            features.setdefault(k, []).append(v)
        for k, v in l.items():
            labels.setdefault(k, []).append(v)
    rows = sum(int(v.shape[0]) for v in labels["click"])
    batch = spec.train.batch_size
    full = rows // batch
    memory = ({k: tf.concat(v, 0) for k, v in features.items()}, {k: tf.concat(v, 0) for k, v in labels.items()})

    def in_memory():
        def take(i):
            return tf.nest.map_structure(lambda t: t[i * batch:(i + 1) * batch], memory)

        # Of unknown length, as the pipeline is: Keras's fit runs a dataset of known length
        # differently (measured: slower epochs in wall time, for both feeds).
        dataset = tf.data.Dataset.range(full).shuffle(full).filter(lambda i: True)
        return dataset.map(take).prefetch(tf.data.AUTOTUNE)

    feeds = {"pipeline": lambda: make_dataset(spec, "train").take(full), "in_memory": in_memory}
    if args.floor:
        element_spec = feeds["pipeline"]().element_spec
        feeds = {"pipeline": feeds["pipeline"], "floor": lambda: _floor_feed(spec, element_spec, full),
                 "in_memory": in_memory}
    specs = {name: (make().element_spec, int(make().cardinality())) for name, make in feeds.items()}
    if len({repr(s) for s in specs.values()}) != 1:
        raise SystemExit(f"the feeds differ (element spec, cardinality): {specs}")
    for make in feeds.values():  # trace the train step (once: same element spec), warm the readers
        model.fit(make().take(5), epochs=1, verbose=0)
    times = {k: [] for k in feeds}
    cpu = {k: [] for k in feeds}
    for repeat in range(args.repeats):
        for name, make in feeds.items():
            dataset = make()
            start, start_cpu = time.perf_counter(), time.process_time()
            history = model.fit(dataset, epochs=1, verbose=0)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(f"  repeat {repeat + 1} {name}: {times[name][-1]:.2f} s, {cpu[name][-1]:.2f} CPU s "
                  f"(loss {history.history['loss'][-1]:.4f})", flush=True)

    # Where the epoch waits: the same steps run one by one (train_on_batch), timing how long the
    # loop blocks on the feed's next batch. Waiting stays near zero when the feed keeps ahead of
    # the training, whatever else runs on the machine.
    waits = {k: [] for k in feeds}
    model.train_on_batch(*next(iter(in_memory())))  # trace train_on_batch's step
    for repeat in range(args.repeats):
        for name, make in feeds.items():
            iterator = iter(make())
            waited, start = 0.0, time.perf_counter()
            while True:
                before = time.perf_counter()
                element = next(iterator, None)
                waited += time.perf_counter() - before
                if element is None:
                    break
                model.train_on_batch(*element)
            waits[name].append(waited / (time.perf_counter() - start))
            print(f"  stepwise {repeat + 1} {name}: waited for input {100 * waits[name][-1]:.1f}% of the epoch",
                  flush=True)

    def ratio(values, reduce, name="pipeline"):
        return reduce(values[name]) / reduce(values["in_memory"])

    print(json.dumps({"rows_per_epoch": full * batch, "steps": full, "batch_size": batch,
                      "params": model.count_params(),
                      "median_s": {k: statistics.median(v) for k, v in times.items()},
                      "min_s": {k: min(v) for k, v in times.items()},
                      "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
                      "pipeline / in_memory: median wall": ratio(times, statistics.median),
                      "best wall": ratio(times, min), "median CPU": ratio(cpu, statistics.median),
                      "paired wall ratios": [p / m for p, m in zip(times["pipeline"], times["in_memory"])],
                      **({"floor / in_memory: median wall": ratio(times, statistics.median, "floor"),
                          "floor / in_memory: median CPU": ratio(cpu, statistics.median, "floor"),
                          "pipeline / floor: median wall": statistics.median(times["pipeline"])
                          / statistics.median(times["floor"])} if args.floor else {}),
                      "median share of the epoch waiting for input (stepwise)": {
                          k: statistics.median(v) for k, v in waits.items()}},
                     indent=1))


def train_rss(args):
    """workflow.train on a spec (one epoch) in this process: the stand-in for ``keras-mmoe train --spec``."""
    import tempfile

    from keras_mmoe import workflow

    with tempfile.TemporaryDirectory() as out:
        workflow.train(args.spec, out_dir=out, name="bench", epochs=1, log=lambda m: print(m, flush=True))


def _vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _run_measured(argv, env):
    """Runs ``argv``; returns (seconds, peak RSS MiB from wait4, {log line: sampled peak MiB while it was
    the last line}, output). The kernel's peak (ru_maxrss of the child) is the figure; the sampled
    one (every 0.1 s) only says in which step the peak came."""
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, phase, peaks = [], ["(start-up)"], {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            kib = _vm_rss_kib(proc.pid)
            peaks[phase[0]] = max(peaks.get(phase[0], 0), kib / 1024)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        lines.append(line)
        text = line.strip()
        if text and not re.match(r"[IWEF]\d{4} |WARNING: All log messages", text):
            phase[0] = text[:70]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n" + "".join(lines)[-3000:])
    return seconds, usage.ru_maxrss / 1024, peaks, "".join(lines)


def rss(args):
    """(c) peak RSS of training (one epoch) at each spec's size, each in a fresh process, alternating."""
    import tempfile

    print(_machine())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    results = {spec: [] for spec in args.spec}
    for repeat in range(args.repeats):
        for spec in args.spec:
            with tempfile.TemporaryDirectory() as out:
                if args.via == "cli":
                    argv = [sys.executable, "-m", "keras_mmoe.cli.main", "train", "--spec", spec,
                            "--epochs", "1", "--out-dir", out]
                else:
                    argv = [sys.executable, __file__, "train-rss", "--spec", spec]
                seconds, peak, phases, output = _run_measured(argv, env)
            rows = re.search(r"train: \d+ file\(s\), (\d+) rows", output)
            result = {"spec": spec, "via": args.via, "train_rows": int(rows.group(1)) if rows else None,
                      "seconds": round(seconds, 1), "peak_rss_mib": round(peak, 1),
                      "sampled_peak_mib_by_step": {k: round(v) for k, v in phases.items()}}
            results[spec].append(result)
            print(json.dumps(result, indent=1), flush=True)
    peaks = [statistics.median(r["peak_rss_mib"] for r in results[spec]) for spec in args.spec]
    print(json.dumps({"median_peak_rss_mib": dict(zip(args.spec, peaks))}, indent=1))
    if len(peaks) == 2:
        print(f"peak RSS ratio (second / first): {peaks[1] / peaks[0]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("write")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--formats", default="csv,tfrecord")
    p.set_defaults(func=write)
    p = sub.add_parser("pipeline")
    p.add_argument("--data", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=pipeline)
    p = sub.add_parser("fit")
    p.add_argument("--data", required=True)
    p.add_argument("--format", default="csv", choices=("csv", "tfrecord"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--floor", action="store_true",
                   help="also feed the epoch from a bare read + decode_csv/parse_example pipeline (no checks)")
    p.set_defaults(func=fit)
    p = sub.add_parser("train-rss")
    p.add_argument("--spec", required=True)
    p.set_defaults(func=train_rss)
    p = sub.add_parser("rss")
    p.add_argument("--spec", action="append", required=True)
    p.add_argument("--via", choices=("cli", "workflow"), default="cli",
                   help="cli: `python -m keras_mmoe.cli.main train --spec`; workflow: keras_mmoe.workflow.train")
    p.add_argument("--repeats", type=int, default=1)
    p.set_defaults(func=rss)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
