"""The validation budget: a seeded sample per machine/section/domain/label, chosen from metadata."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from asd_ray import schema, shards
from asd_ray.validate import ValidationConfig, choose, load_validation, read_rows

real_list = shards.list_shards


def _clips(split: str, n: int, start: int = 0) -> list[dict]:
    """DCASE naming order: source anomalies, source normals, then target clips (as in a real shard)."""
    rows = []
    for i in range(start, start + n):
        domain = "source" if i % 10 < 8 else "target"
        label = "normal" if split == "train" else ("anomaly" if i % 2 else "normal")
        rows.append({"clip_id": f"fan/{split}/section_00_{domain}_{split}_{label}_{i:04d}", "machine": "fan",
                     "section": "00", "domain": domain, "split": split, "label": label, "attributes": {},
                     "sample_rate": 16000, "num_samples": 50, "audio": schema.encode_pcm16(np.full(50, i / 1e4))})
    return sorted(rows, key=lambda r: r["clip_id"])


@pytest.fixture
def data(tmp_path):
    root = str(tmp_path / "d")
    for split in ("train", "test"):
        rows = _clips(split, 400)
        for k, part in enumerate((rows[:250], rows[250:])):  # two shards, several row groups each
            shards.write_shard(shards.shard_url(root, split, "fan", f"s-{k}"), schema.clips_table(part))
    return root


def test_budget_holds_both_domains_and_labels_seeded(data, monkeypatch):
    read_groups = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: read_groups.append(list(groups)) or real(self, groups, **kw))
    val = load_validation(ValidationConfig(ref_clips=3, test_clips=4), data, None, 40)
    test, refs = val["test"], val["refs"]
    pairs = list(zip(test["domain"], test["label"]))
    # on today's shard order the first N rows were source clips only: now every domain and label is there
    assert sorted(set(pairs)) == [("source", "anomaly"), ("source", "normal"), ("target", "anomaly"),
                                  ("target", "normal")] and all(pairs.count(p) == 4 for p in set(pairs))
    assert sorted(refs["domain"].tolist()) == ["source"] * 3 + ["target"] * 3
    assert test["audio"].shape == (16, 40) and test["audio"].dtype == np.float32
    # audio is read only from the row groups that hold chosen clips, not whole shards
    urls = shards.list_shards(data, "train") + shards.list_shards(data, "test")
    groups = sum(pq.ParquetFile(u).num_row_groups for u in urls)
    assert sum(len(g) for g in read_groups) <= 16 + 6 < groups

    # the same sample whatever the order of the shards; another seed, another sample
    a = choose(data, "test", None, 4, ("machine", "section", "domain", "label"), 0, None)
    monkeypatch.setattr(shards, "list_shards", lambda *args, **kw: sorted(real_list(*args, **kw), reverse=True))
    b = choose(data, "test", None, 4, ("machine", "section", "domain", "label"), 0, None)
    c = choose(data, "test", None, 4, ("machine", "section", "domain", "label"), 1, None)
    assert a == b and a != c
    # the audio belongs to the chosen clip
    ids = [r for s in sorted(a) for r in a[s]]
    assert len(ids) == 16 and read_rows(a, 50, None)["audio"].shape == (16, 50)


def test_budget_without_labels_is_a_clear_error(tmp_path):
    root = str(tmp_path / "u")
    rows = _clips("test", 20)
    for r in rows:
        r["domain"] = r["label"] = None
    shards.write_shard(shards.shard_url(root, "test", "fan", "s"), schema.clips_table(rows))
    shards.write_shard(shards.shard_url(root, "train", "fan", "s"), schema.clips_table(_clips("train", 20)))
    with pytest.raises(ValueError, match="validation needs .* test clips with known domain and label"):
        load_validation(ValidationConfig(), root, None, 40)
