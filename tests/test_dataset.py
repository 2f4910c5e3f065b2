import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from asd_ray import schema, shards
from asd_ray.dataset import read_clips


@pytest.fixture(scope="module")
def synth_s3(ray_local, s3_endpoint, tiny_synth_config):
    import boto3

    from asd_ray.synth.generate import synthesize

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="asd-read")
    synthesize(tiny_synth_config("s3://asd-read/clips", machines=["pump", "fan", "gearbox"]), progress=False)
    return "s3://asd-read/clips"


def test_filters_and_fixed_length(synth_s3):
    ds = read_clips(synth_s3, split="test", machine=["fan", "pump"], domain="target", num_samples=40000)
    rows = ds.take_all()
    assert len(rows) == 2 * 8
    assert {r["machine"] for r in rows} == {"fan", "pump"} and {r["domain"] for r in rows} == {"target"}
    assert all(r["audio"].shape == (40000,) and r["audio"].dtype == np.float32 for r in rows)
    assert all(r["audio"][32000:].max() == 0 for r in rows)  # 2 s clips zero-padded to 2.5 s
    assert {r["label"] for r in rows} == {"normal", "anomaly"}
    assert "speed=" in rows[0]["attribute_key"]
    train = read_clips(synth_s3, split="train", section="00", num_samples=16000).count()
    assert train == 3 * 24


def test_decoded_audio_matches_stored_pcm(synth_s3):
    row = read_clips(synth_s3, split="test", machine="gearbox", num_samples=32000).take(1)[0]
    table = shards.read_shard(shards.list_shards(synth_s3, "test", "gearbox")[0])
    stored = dict(zip(table["clip_id"].to_pylist(), table["audio"].to_pylist()))[row["clip_id"]]
    np.testing.assert_array_equal(row["audio"], schema.decode_pcm16(stored))
    # scoring moves the int16 samples and scales them on the device: the same waveform
    pcm = read_clips(synth_s3, split="test", machine="gearbox", num_samples=32000, pcm16=True).take(1)[0]
    assert pcm["clip_id"] == row["clip_id"] and pcm["audio"].dtype == np.int16
    np.testing.assert_array_equal(pcm["audio"] / np.float32(schema.PCM16_FULL_SCALE), row["audio"])


def test_a_shard_is_read_in_bounded_batches(synth_s3, monkeypatch):
    """A read task streams its shard: no batch larger than READ_ROWS, every matching clip once."""
    import pyarrow as pa

    from asd_ray import dataset

    url = shards.list_shards(synth_s3, "train", "pump")[0]
    stored = shards.read_shard(url, columns=["clip_id", "domain"])
    monkeypatch.setattr(dataset, "READ_ROWS", 5)
    batches = list(dataset.read_shard_batches(pa.table({"url": [url]}), num_samples=100, crop="start",
                                              sample_rate=None, pcm16=True, filters={"domain": ["source"]},
                                              options=None))
    assert len(batches) > 1 and max(b.num_rows for b in batches) <= 5
    ids = [i for b in batches for i in b["clip_id"].to_pylist()]
    expected = [i for i, d in zip(stored["clip_id"].to_pylist(), stored["domain"].to_pylist()) if d == "source"]
    assert ids == expected and len(ids) >= 10


def test_schema_error_names_shard_and_column(ray_local, tmp_path, tiny_synth_config):
    from asd_ray.synth.generate import synthesize

    out = str(tmp_path / "d")
    synthesize(tiny_synth_config(out, machines=["fan"]), progress=False)
    victim = shards.list_shards(out, "test")[0]
    pq.write_table(pq.read_table(victim).drop(["domain"]), victim)
    with pytest.raises(schema.SchemaError, match=f"{victim}: missing column 'domain'"):
        read_clips(out, num_samples=100)
    assert read_clips(out, split="train", num_samples=100).count() == 24  # other partitions still read


def test_corrupt_clip_is_named(ray_local, tmp_path, tiny_synth_config):
    from asd_ray.synth.generate import synthesize

    out = str(tmp_path / "d")
    synthesize(tiny_synth_config(out, machines=["fan"]), progress=False)
    victim = shards.list_shards(out, "test")[0]
    table = pq.read_table(victim)
    audio = table["audio"].to_pylist()
    audio[3] = audio[3][:-7]
    pq.write_table(table.set_column(table.schema.get_field_index("audio"), "audio",
                                    __import__("pyarrow").array(audio, type=__import__("pyarrow").binary())), victim)
    with pytest.raises(Exception, match=r"clip fan/test/\S+ has \d+ audio bytes, expected"):
        read_clips(out, split="test", num_samples=100).take_all()


WRITER = """
import sys, numpy as np
from asd_ray import schema, shards
rows = [{"clip_id": f"fan/train/big{i}", "machine": "fan", "section": "00", "domain": "source", "split": "train",
         "label": "normal", "attributes": {}, "sample_rate": 16000, "num_samples": 4_000_000,
         "audio": np.random.default_rng(i).integers(-3000, 3000, 4_000_000).astype('<i2').tobytes()} for i in range(60)]
print("ready", flush=True)
shards.write_shard(sys.argv[1], schema.clips_table(rows))
"""


def test_killed_writer_leaves_readers_a_consistent_dataset(ray_local, tmp_path, tiny_synth_config):
    """SIGKILL a writer in the middle of a 480 MB shard: no partial shard is ever visible."""
    from asd_ray.synth.generate import synthesize

    out = str(tmp_path / "d")
    synthesize(tiny_synth_config(out, machines=["fan"]), progress=False)
    before = shards.list_shards(out)
    target = shards.shard_url(out, "train", "fan", "big-00000")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, target], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    folder = os.path.dirname(target)
    deadline = time.time() + 120
    while not any(n.startswith(".tmp-") for n in os.listdir(folder)):
        assert time.time() < deadline and proc.poll() is None, "writer never started its shard"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(n.startswith(".tmp-") for n in os.listdir(folder))  # the kill did land mid-shard
    assert not os.path.exists(target)
    assert shards.list_shards(out) == before
    assert read_clips(out, num_samples=100).count() == 40


def test_rerun_killed_before_it_completes_leaves_readers_the_old_dataset(ray_local, tmp_path, tiny_synth_config,
                                                                         monkeypatch):
    """A re-run writes a new generation of shards; until all are written and published, readers see
    the old complete set, never old and new clips side by side."""
    from asd_ray.synth import generate

    out = str(tmp_path / "d")
    generate.synthesize(tiny_synth_config(out, machines=["fan"]), progress=False)
    old = shards.list_shards(out)
    old_ids = sorted(read_clips(out, num_samples=100).to_pandas()["clip_id"])

    def killed(*args, **kwargs):  # the driver dies once every new shard is written, before publishing
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "publish", killed)
    bigger = tiny_synth_config(out, machines=["fan"], counts={"train_source": 40, "train_target": 4,
                                                              "test_normal": 4, "test_anomaly": 4}, shard_mb=0.05)
    with pytest.raises(KeyboardInterrupt):
        generate.synthesize(bigger, progress=False)
    monkeypatch.undo()
    on_disk = [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".parquet")]
    assert len(on_disk) > len(old)  # the new generation is there, unpublished
    assert shards.list_shards(out) == old
    assert sorted(read_clips(out, num_samples=100).to_pandas()["clip_id"]) == old_ids

    generate.synthesize(bigger, progress=False)  # the re-run completes it
    new = shards.list_shards(out)
    ids = read_clips(out, num_samples=100).to_pandas()["clip_id"]
    assert len(ids) == len(set(ids)) == 40 + 4 + 2 * (4 + 4) and not set(new) & set(old)
    on_disk = sorted(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".parquet"))
    assert on_disk == new  # the replaced generation and the killed run's shards are gone


def test_a_machine_name_that_is_no_safe_file_name_is_refused_on_read(ray_local, tmp_path, tiny_synth_config):
    """Shards written by another tool are read too: a machine `../../x` must never reach a file name."""
    import pyarrow as pa

    from asd_ray.synth.generate import synthesize

    out = str(tmp_path / "d")
    synthesize(tiny_synth_config(out, machines=["fan"]), progress=False)
    victim = shards.list_shards(out, "test")[0]
    table = pq.read_table(victim)
    table = table.set_column(table.schema.get_field_index("machine"), "machine",
                             pa.array(["../../x"] * table.num_rows, pa.string()))
    pq.write_table(table, victim)  # not through write_shard, which refuses it
    with pytest.raises(Exception, match=f"{victim}: clip fan/test/\\S+: machine='../../x': expected letters"):
        read_clips(out, split="test", num_samples=100).take_all()
