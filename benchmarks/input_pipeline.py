"""Input pipeline throughput: what each choice in cifar/data.py buys, measured in one run.

  .venv/bin/python benchmarks/input_pipeline.py [--records 20000] [--batch-size 128]

Writes a synthetic split of CIFAR-sized records to a temp folder (or reads --data-dir), then times
two passes over it for several pipeline variants and prints images/s and the ratio to the naive
one (per-record parsing): the first pass reads the files, the second may come from cache().
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code" / "phase0" / "src"))
from cifar import data  # noqa: E402

FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}


def write_split(folder, records, shards=4):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        path = folder / f"train-{shard:05d}-of-{shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for _ in range(shard, records, shards):
                image = rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(
                        value=[int(rng.integers(10))]))}))
                writer.write(example.SerializeToString())
    (folder / "manifest.json").write_text(f'{{"records": {records}}}')
    return folder


def parse_one(record):
    parsed = tf.io.parse_single_example(record, FEATURES)
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), (32, 32, 3))
    return image, parsed["label"]


def augment_one(image, label):
    image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
    image = tf.image.random_crop(image, (32, 32, 3))
    return tf.image.random_flip_left_right(image), label


def per_record(folder, batch_size, augment):
    files = data.list_shards(str(folder))
    ds = tf.data.TFRecordDataset(files).map(parse_one, num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        ds = ds.map(augment_one, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def images_per_second(dataset, passes=2):
    """images/s of each full pass: the first reads the files, later ones may hit cache()."""
    rates = []
    for _ in range(passes):
        start, count = time.perf_counter(), 0
        for images, _ in dataset:
            count += int(images.shape[0])
        rates.append(count / (time.perf_counter() - start))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", help="a train split folder to read instead of synthetic data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data_dir) if args.data_dir else write_split(Path(tmp) / "train",
                                                                         args.records)
        batch = args.batch_size
        variants = [
            ("per-record parse, no augmentation", per_record(folder, batch, False)),
            ("batched parse (cifar.data), eval split", data.make_dataset(folder, batch, False)),
            ("per-record parse + per-image augmentation", per_record(folder, batch, True)),
            ("batched parse + batched augmentation (cifar.data, train)",
             data.make_dataset(folder, batch, True)),
        ]
        results = [(name, images_per_second(ds)) for name, ds in variants]
    print(f"{data.count_records(str(folder)) if args.data_dir else args.records} records, "
          f"batch {batch}, TF {tf.__version__}")
    print(f"{'variant':58} {'1st pass':>10} {'ratio':>6} {'2nd pass':>10} {'ratio':>6}")
    first, second = results[0][1]
    for name, (cold, warm) in results:
        print(f"{name:58} {cold:10.0f} {cold / first:5.2f}x {warm:10.0f} {warm / second:5.2f}x")


if __name__ == "__main__":
    main()
