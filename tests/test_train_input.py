"""The streaming training input: seeded per-epoch orders, no whole-dataset stage, mixed batches,
int16 audio, random crops."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from asd_ray import shards
from asd_ray.train import TrainConfig, label_map, training_data


@pytest.fixture(scope="module")
def input_data(ray_local, tmp_path_factory, tiny_synth_config):
    """Three machine types, one per shard folder as ingest writes them, targets last; 1 s clips."""
    from asd_ray.synth.generate import Counts, synthesize

    out = str(tmp_path_factory.mktemp("input") / "data")
    synthesize(tiny_synth_config(out, clip_seconds=1.0, machines=["fan", "gearbox", "pump"],
                                 counts=Counts(train_source=120, train_target=8, test_normal=1, test_anomaly=1)),
               progress=False)
    return out


def _config(data: str, **kw) -> TrainConfig:
    return TrainConfig(data=data, clip_seconds=0.5, seed=7, **kw)


def _epochs(ds, n: int, batch_size: int = 32, shuffle_buffer: int | None = None) -> list[list[dict]]:
    return [list(ds.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=shuffle_buffer,
                                 local_shuffle_seed=0 if shuffle_buffer else None)) for _ in range(n)]


def _ids(epoch: list[dict]) -> list[str]:
    return [i for b in epoch for i in b["clip_id"]]


def test_each_epoch_reads_every_clip_once_in_a_new_order_reproducible_from_the_seed(input_data):
    cfg = _config(input_data)
    labels = label_map(cfg)
    first = training_data(cfg, labels, meta=True)
    first.context.execution_options.preserve_order = True  # the order of blocks too, to compare whole epochs
    again = training_data(cfg, labels, meta=True)
    again.context.execution_options.preserve_order = True
    other_seed = training_data(_config(input_data).model_copy(update={"seed": 8}), labels, meta=True)
    other_seed.context.execution_options.preserve_order = True

    epochs = [_ids(e) for e in _epochs(first, 2)]
    assert len(epochs[0]) == len(set(epochs[0])) == 3 * 128  # every training clip, once
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]  # a new order each epoch
    assert [_ids(e) for e in _epochs(again, 2)] == epochs  # the same orders from the same seed
    assert _ids(_epochs(other_seed, 1)[0]) != epochs[0]

    # a resumed run (first_epoch=1) starts with the order of the epoch it resumes
    resumed = training_data(cfg, labels, first_epoch=1, meta=True)
    resumed.context.execution_options.preserve_order = True
    assert _ids(_epochs(resumed, 1)[0]) == epochs[1]


def test_no_stage_waits_for_the_whole_dataset(input_data):
    from ray.data._internal.logical.interfaces import LogicalOperator
    from ray.data._internal.logical.operators.all_to_all_operator import AbstractAllToAll

    cfg = _config(input_data)
    ds = training_data(cfg, label_map(cfg))

    def operators(op: LogicalOperator):
        yield op
        for child in op.input_dependencies:
            yield from operators(child)

    ops = list(operators(ds._logical_plan.dag))
    assert ops and not [op.name for op in ops if isinstance(op, AbstractAllToAll)]


def test_batches_mix_machine_types_and_domains_whatever_the_shard_layout(input_data):
    cfg = _config(input_data)
    batches = _epochs(training_data(cfg, label_map(cfg), meta=True), 1, shuffle_buffer=cfg.shuffle_buffer)[0]
    assert {m for b in batches for m in b["machine"]} == {"fan", "gearbox", "pump"}
    # every shard holds one machine type, in file-name order: read as stored, a 32-clip batch would
    # hold one machine type (two where shards meet) and the targets would come in a few batches
    full = [b for b in batches if len(b["machine"]) == 32]
    assert np.mean([len(set(b["machine"])) for b in full]) >= 2.5
    with_target = sum(1 for b in full if (b["domain"] == "target").any())
    assert with_target >= len(full) / 2, with_target  # 24 targets in 384 clips: spread, not together


def test_audio_stays_int16_and_longer_clips_get_a_random_window_per_epoch(input_data):
    cfg = _config(input_data, machines=["fan"])  # 1 s clips cropped to 0.5 s
    stored = {}
    for url in shards.list_shards(input_data, "train", ["fan"]):
        table = pq.read_table(url, columns=["clip_id", "audio"])
        stored.update(zip(table["clip_id"].to_pylist(), table["audio"].to_pylist()))
    starts = []
    for epoch in _epochs(training_data(cfg, label_map(cfg), meta=True), 2):
        audio = np.concatenate([b["audio"] for b in epoch])
        assert audio.dtype == np.int16 and audio.shape[1] == cfg.clip_samples
        starts.append({})
        for clip_id, wave in zip(_ids(epoch), audio):
            full = np.frombuffer(stored[clip_id], "<i2")
            offsets = [s for s in range(len(full) - len(wave) + 1) if np.array_equal(full[s:s + len(wave)], wave)]
            assert offsets, clip_id  # a window of the stored clip, sample for sample
            starts[-1][clip_id] = offsets[0]
    assert len(set(starts[0].values())) > 10  # windows drawn per clip
    assert sum(starts[0][c] != starts[1][c] for c in starts[0]) > len(starts[0]) / 2  # and anew per epoch


def test_the_object_store_budget_reaches_ray_train(input_data):
    from asd_ray.train import make_trainer

    cfg = _config(input_data, input_buffer_mb=96)
    trainer = make_trainer(cfg, label_map(cfg))
    options = trainer.data_config._resolve_execution_options("train")
    assert options.resource_limits.object_store_memory == 96 * 2**20
