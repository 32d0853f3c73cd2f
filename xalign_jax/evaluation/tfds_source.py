"""Evaluation items as TFDS datasets in array_record format, written and read WITHOUT TensorFlow.

``tfds.load`` and TFDS builders' ``download_and_prepare`` need TensorFlow; the array_record data sources do not.
So ``prepare_task`` serialises items with TFDS's own ``FeaturesDict`` (pure NumPy/protobuf), writes one
array_record shard per split with ``ArrayRecordWriter`` and a ``dataset_info.json`` + ``features.json`` that
``tfds.builder_from_directory`` understands; ``load_part`` reads a split back through ``as_data_source``.
Dataset name: ``xalign_<task>_<language>``, version 1.1.0 (1.0.0 had no ``collection``/``translates``), splits =
the task parts (test, dev, demo).
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from xalign_jax.evaluation import tasks
from xalign_jax.evaluation.tasks import Item

VERSION = "1.1.0"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def _features():
    import tensorflow_datasets as tfds
    text = tfds.features.Text()
    return tfds.features.FeaturesDict({
        "key": text, "source": text, "label": np.int64, "options": tfds.features.Sequence(text),
        "field_names": tfds.features.Sequence(text), "field_values": tfds.features.Sequence(text),
        "collection": text, "translates": tfds.features.Sequence(text)})


def dataset_name(task: str, language: str) -> str:
    return f"xalign_{task}_{language}"


def default_tfds_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", pathlib.Path.home() / "tensorflow_datasets"))


def _encode(item: Item) -> dict:
    return {"key": item.key, "source": item.source, "label": item.label, "options": list(item.options),
            "field_names": list(item.fields), "field_values": list(item.fields.values()),
            "collection": item.collection, "translates": sorted(item.translates)}


def _decode(example: dict) -> Item:
    def text(value) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    fields = dict(zip(map(text, example["field_names"]), map(text, example["field_values"])))
    return Item(text(example["key"]), fields, int(example["label"]), tuple(map(text, example["options"])),
                text(example["source"]), text(example["collection"]), frozenset(map(text, example["translates"])))


def prepare_task(task: str, language: str, data_dir: pathlib.Path | str | None = None,
                 tfds_dir: pathlib.Path | str | None = None) -> pathlib.Path:
    """Write every part of ``task``/``language`` from the shared files as a TFDS array_record dataset."""
    from array_record.python.array_record_module import ArrayRecordWriter
    name = dataset_name(task, language)
    root = pathlib.Path(tfds_dir or default_tfds_dir()) / name / VERSION
    root.mkdir(parents=True, exist_ok=True)
    features, splits = _features(), []
    for part in tasks.parts(task):
        records = [features.serialize_example(_encode(item)) for item in tasks.load_part(task, language, part,
                                                                                           data_dir)]
        writer = ArrayRecordWriter(str(root / f"{name}-{part}.array_record-00000-of-00001"), "group_size:1")
        for record in records:
            writer.write(record)
        writer.close()
        splits.append({"name": part, "numBytes": str(sum(map(len, records))), "shardLengths": [str(len(records))],
                       "filepathTemplate": _TEMPLATE})
    features.save_config(str(root))
    info = {"name": name, "version": VERSION, "fileFormat": "array_record", "moduleName": __name__,
            "description": f"{task} {language} evaluation items (xalign-jax)", "splits": splits}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return root


def load_part(task: str, language: str, part: str, tfds_dir: pathlib.Path | str | None = None) -> list[Item]:
    """Items of one part read through the TFDS array_record data source (no TensorFlow)."""
    import tensorflow_datasets as tfds
    root = pathlib.Path(tfds_dir or default_tfds_dir()) / dataset_name(task, language) / VERSION
    if not (root / "dataset_info.json").is_file():
        raise FileNotFoundError(f"no prepared TFDS dataset at {root}; run tfds_source.prepare_task first")
    source = tfds.builder_from_directory(str(root)).as_data_source(part)
    return [_decode(source[i]) for i in range(len(source))]
