"""The training input: clip shards streamed to Ray Train, in a new seeded order every epoch.

No stage waits for the whole dataset. Every epoch, a Ray Data datasource deals the training
set's Parquet row groups (16 clips each as ingest writes them, from every shard) in a random order seeded by
``(seed, epoch)`` into read tasks of ``mix_row_groups`` row groups each. A read task reads its
row groups, shuffles their clips together, crops each clip to the model's length (a random
window per clip and epoch when clips are longer), labels it and yields blocks of
``block_clips`` clips whose audio stays int16: the training worker scales it to float on its
device. The workers' local shuffle buffer (``shuffle_buffer``) then mixes blocks of several
read tasks.

Why row groups and not Ray Data's own file shuffling: ingest writes one machine type per shard,
in file-name order, so a file-level shuffle still gives batches of one or two machine types,
with a machine's few target-domain clips arriving together. Dealing row groups of every shard
puts several machine types and both domains into every read task, in proportion to the data.
The row group is the unit of the order: the smaller it is, the more evenly a run of clips of
one kind (a new installation's recordings, say) spreads over the epoch, which is why ingest
writes row groups of 16 clips (5 MB of 10 s clips, still an efficient object-storage read).

Memory, per training worker: about ``mix_row_groups`` row groups per running read task, the
blocks waiting in the object store (at most ``input_buffer_mb`` for the whole training input,
Ray Data's object-store budget) and the local shuffle buffer (``shuffle_buffer`` clips).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from asd_ray import dataset, shards, storage
from asd_ray.dataset import RowGroup, row_groups
from asd_ray.labels import LabelMap, class_key
from asd_ray.storage import StorageOptions

READ_COLUMNS = ["clip_id", "machine", "section", "domain", "split", "label", "attributes", "audio",
                "num_samples", "sample_rate"]


@dataclass(frozen=True)
class ReadSettings:
    """What every read task needs: how to reach the shards and how to turn rows into training rows."""
    options: StorageOptions
    num_samples: int
    sample_rate: int
    classes: list[str]
    with_domain: bool
    block_clips: int
    meta: bool  # keep clip_id, machine and domain (to measure batches), not only audio and label


def epoch_order(n_groups: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_groups)


class TrainingClips(Datasource):
    """Row groups dealt into read tasks in a new order per execution (Ray Train runs the dataset
    once per epoch). Ray Data counts executions in its ``DataContext``, as its own file shuffling
    does; ``first_epoch`` is the epoch a resumed run starts at, so its orders go on from there."""

    def __init__(self, groups: list[RowGroup], settings: ReadSettings, seed: int, mix_row_groups: int,
                 first_epoch: int = 0):
        self.groups, self.settings, self.seed = groups, settings, seed
        self.mix_row_groups, self.first_epoch = mix_row_groups, first_epoch

    def get_name(self) -> str:
        return "TrainingClips"

    def estimate_inmemory_data_size(self) -> int:
        return sum(g.rows for g in self.groups) * self.settings.num_samples * 2

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        epoch = self.first_epoch + getattr(data_context, "_execution_idx", 0)
        order = epoch_order(len(self.groups), self.seed, epoch)
        tasks = []
        for t, start in enumerate(range(0, len(order), self.mix_row_groups)):
            chunk = [self.groups[i] for i in order[start:start + self.mix_row_groups]]
            rows = sum(g.rows for g in chunk)
            meta = BlockMetadata(num_rows=rows, size_bytes=rows * self.settings.num_samples * 2,
                                 input_files=sorted({g.url for g in chunk}), exec_stats=None)
            tasks.append(ReadTask(functools.partial(read_mixed, chunk, self.settings, (self.seed, epoch, t)), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def read_mixed(groups: list[RowGroup], settings: ReadSettings, seed: tuple[int, int, int]) -> Iterator[pa.Table]:
    """One read task: its row groups' clips in a seeded random order, cropped, labelled, int16."""
    rng = np.random.default_rng(list(seed))
    fs, _ = storage.pyarrow_fs(groups[0].url, settings.options)
    tables = []
    for url in dict.fromkeys(g.url for g in groups):  # each file opened once
        indices = [g.index for g in groups if g.url == url]
        table = pq.ParquetFile(storage.strip_protocol(url), filesystem=fs).read_row_groups(indices, READ_COLUMNS)
        tables.append(table.append_column("path", pa.array([url] * table.num_rows, pa.string())))
    table = pa.concat_tables(tables)
    table = table.take(rng.permutation(table.num_rows))
    labels = LabelMap(classes=settings.classes)
    for start in range(0, table.num_rows, settings.block_clips):
        clips = dataset.decode_batch(table.slice(start, settings.block_clips), settings.num_samples, crop="random",
                                     rng=rng, sample_rate=settings.sample_rate, pcm16=True)
        yield training_rows(clips, labels, settings.with_domain, settings.meta)


def training_rows(clips: pa.Table, labels: LabelMap, with_domain: bool, meta: bool) -> pa.Table:
    keys = zip(*(clips[c].to_pylist() for c in ("machine", "section", "domain", "attribute_key")))
    out = {"audio": clips["audio"],
           "label": pa.array([labels.index(*class_key(*k, with_domain=with_domain)) for k in keys], pa.int64())}
    if meta:
        out.update(clip_id=clips["clip_id"], machine=clips["machine"], domain=clips["domain"])
    return pa.table(out)


def training_dataset(url: str, machines: list[str] | None, settings: ReadSettings, seed: int, mix_row_groups: int,
                     first_epoch: int = 0, read_tasks: int | None = None) -> ray.data.Dataset:
    """The training clips under ``url`` as a streaming Ray Dataset (int16 ``audio``, ``label``).

    With ``read_tasks``, at most that many read tasks run at once and they reserve no CPU: Train
    workers may hold every CPU of the cluster (an elastic run grows until they do), and reads that
    wait for a free CPU would then wait forever."""
    urls = shards.list_shards(url, "train", machines, settings.options)
    if not urls:
        raise FileNotFoundError(f"no training clip shards under {url} (machine={machines})")
    source = TrainingClips(row_groups(urls, settings.options), settings, seed, mix_row_groups, first_epoch)
    if read_tasks is None:
        return ray.data.read_datasource(source)
    return ray.data.read_datasource(source, num_cpus=0, concurrency=read_tasks)


def ingest_options(buffer_mb: float):
    """Ray Train's ingest options with the object-store budget of the training input."""
    options = ray.train.DataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(object_store_memory=int(buffer_mb * 2**20))
    return options
