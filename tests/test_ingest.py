import csv
import io

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from asd_ray import cli, shards, storage
from asd_ray.ingest import BadClip, IngestConfig, ingest, parse_name

SR = 16000


def _wav(samples: np.ndarray, rate: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _tone(seconds=0.5, channels=1):
    x = (0.3 * np.sin(np.arange(int(seconds * SR)) * 0.05) * 32767).astype(np.int16)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


GOOD = {
    "fan/train/section_00_source_train_normal_0000_speed_900_airflow_50.wav": _tone(),
    "fan/train/section_00_target_train_normal_0001_speed_1600_airflow_30.wav": _tone(0.4),
    "fan/test/section_00_source_test_anomaly_0000_speed_900_airflow_50.wav": _tone(),
    "fan/test/section_01_0007.wav": _tone(),  # eval: no domain, no label
    "valve/train/section_00_source_train_normal_0000_noAttribute.wav": _tone(),
}
BAD = {
    "fan/train/section_00_source_train_normal_0002_speed.wav": ("attributes", _wav(_tone())),
    "fan/train/recording_12.wav": ("unparseable name", _wav(_tone())),
    "fan/train/section_00_source_test_normal_0003.wav": ("'train' folder", _wav(_tone())),
    "fan/train/section_00_source_train_normal_0004_a_1.wav": ("unreadable", b"RIFF\x00\x00garbage"),
    "fan/train/section_00_source_train_normal_0005_a_1.wav": ("empty", _wav(np.zeros(0, np.int16))),
    "fan/train/section_00_source_train_normal_0006_a_1.wav": ("sample rate 8000 Hz, expected 16000",
                                                              _wav(_tone(), 8000)),
    "fan/train/section_00_source_train_normal_0007_a_1.wav": ("2 channels, expected mono", _wav(_tone(channels=2))),
    "loose/section_00_source_train_normal_0000.wav": ("not in a layout understood here", _wav(_tone())),
    # machine names become file names: "_" would break the evaluator's parsing of them
    "fan_2/train/section_00_source_train_normal_0000.wav": ("machine folder 'fan_2': expected letters, digits",
                                                            _wav(_tone())),
}


def _write_tree(root: str) -> None:
    for rel, samples in GOOD.items():
        storage.write_bytes_atomic(storage.join(root, rel), _wav(samples))
    for rel, (_, data) in BAD.items():
        storage.write_bytes_atomic(storage.join(root, rel), data)


def test_parse_name():
    meta = parse_name("fan", "train", "section_03_target_train_normal_0012_car_A1_spd_28V")
    assert meta == {"section": "03", "domain": "target", "label": "normal", "attributes": {"car": "A1", "spd": "28V"}}
    assert parse_name("fan", "test", "section_00_0001")["label"] is None
    for stem in ("section_00_0001", "section_0_source_train_normal_0001", "x"):
        try:
            parse_name("fan", "train", stem)
        except BadClip as e:
            assert "expected section_XX" in str(e)
        else:
            raise AssertionError(stem)


def _check(dest: str, summary: dict) -> None:
    assert summary["clips"] == len(GOOD) and summary["rejected"] == len(BAD)
    reasons = dict(summary["rejects"])
    for rel, (reason, _) in BAD.items():
        match = [r for p, r in reasons.items() if p.endswith(rel)]
        assert match and reason in match[0], (rel, match)
    rejects = list(csv.reader(io.StringIO(storage.read_bytes(storage.join(dest, "_rejects.csv")).decode())))
    assert rejects[0] == ["path", "reason"] and len(rejects) == 1 + len(BAD)
    table = pa.concat_tables([shards.read_shard(u) for u in shards.list_shards(dest)])
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    assert set(rows) == {f"{k.split('/')[0]}/{k.split('/')[1]}/{k.split('/')[2][:-4]}" for k in GOOD}
    for rel, samples in GOOD.items():
        row = rows[rel[:-4]]
        assert row["audio"] == samples.astype("<i2").tobytes()  # byte-identical PCM
    eval_row = rows["fan/test/section_01_0007"]
    assert eval_row["label"] is None and eval_row["domain"] is None and eval_row["section"] == "01"
    assert dict(rows["fan/train/section_00_source_train_normal_0000_speed_900_airflow_50"]["attributes"]) == {
        "speed": "900", "airflow": "50"}


def test_ingest_from_s3_reports_every_bad_file_and_reruns_cleanly(ray_local, bucket):
    src, dest = f"{bucket}/dcase", f"{bucket}/clips"
    _write_tree(src)
    summary = ingest(IngestConfig(src=src, dest=dest), progress=False)
    _check(dest, summary)
    first = shards.list_shards(dest)
    again = ingest(IngestConfig(src=src, dest=dest), progress=False)
    _check(dest, again)  # the same clips, once each
    second = shards.list_shards(dest)
    assert len(second) == len(first) and not set(first) & set(second)  # a new generation replaced the old
    fs, root = storage.fsspec_fs(dest)
    on_disk = sorted(storage.full_url(dest, p) for p in fs.find(root) if p.endswith(".parquet"))
    assert on_disk == second  # the old generation's files are gone
    names = sorted(u.split("/machine=", 1)[1] for u in second)  # indices count per partition
    assert names[0].split("/", 1)[1].startswith("ingest-00000-")


def test_cli_exit_code_and_summary(ray_local, tmp_path, capsys):
    src, dest = str(tmp_path / "dcase"), str(tmp_path / "clips")
    _write_tree(src)
    assert cli.main(["ingest", src, dest, "shard_mb=0.02"]) == 1
    out = capsys.readouterr().out
    assert f"ingested {len(GOOD)} clips" in out and f"rejected {len(BAD)} files" in out
    assert "2 channels, expected mono" in out
    _check(dest, {"clips": len(GOOD), "rejected": len(BAD),
                  "rejects": [tuple(r) for r in csv.reader(open(f"{dest}/_rejects.csv"))][1:]})


def test_synth_wav_layout_ingests_to_the_same_audio(ray_local, tmp_path, tiny_synth_config):
    from asd_ray.synth.generate import synthesize

    wav_root, pq_root, ingested = (str(tmp_path / n) for n in ("wav", "pq", "ingested"))
    synthesize(tiny_synth_config(wav_root, format="wav", machines=["compressor"]), progress=False)
    synthesize(tiny_synth_config(pq_root, machines=["compressor"]), progress=False)
    summary = ingest(IngestConfig(src=wav_root, dest=ingested), progress=False)
    assert summary["rejected"] == 0 and summary["clips"] == 40

    def table(root):
        t = pa.concat_tables([shards.read_shard(u) for u in shards.list_shards(root)])
        return {r["clip_id"]: (r["audio"], r["label"], r["domain"], dict(r["attributes"])) for r in t.to_pylist()}

    assert table(ingested) == table(pq_root)


# one small dataset per published layout, as its files are named and foldered
LAYOUT_FILES = {
    "dcase2020": {  # id_XX is the section; one domain
        "ToyCar/train/normal_id_01_00000000.wav": ("train", "01", "source", "normal"),
        "ToyCar/train/normal_id_01_00000001.wav": ("train", "01", "source", "normal"),
        "ToyCar/test/anomaly_id_01_00000000.wav": ("test", "01", "source", "anomaly"),
        "ToyCar/test/id_05_00000003.wav": ("test", "05", "source", None),  # eval
    },
    "dcase2021": {  # MIMII DUE / ToyADMOS2: test clips in source_test/ and target_test/
        "gearbox/train/section_00_target_train_normal_0000_volt_1.3.wav": ("train", "00", "target", "normal"),
        "gearbox/source_test/section_00_source_test_anomaly_0001.wav": ("test", "00", "source", "anomaly"),
        "gearbox/target_test/section_02_target_test_normal_0002.wav": ("test", "02", "target", "normal"),
        "gearbox/target_test/section_03_target_test_0004.wav": ("test", "03", "target", None),  # eval
    },
    "dcase2022": {  # DCASE 2022-2025
        "bearing/train/section_00_source_train_normal_0000_vel_8.wav": ("train", "00", "source", "normal"),
        "bearing/test/section_00_target_test_anomaly_0000_vel_16.wav": ("test", "00", "target", "anomaly"),
        "bearing/test/section_00_0001.wav": ("test", "00", None, None),  # eval
    },
}
MIMII = {f"{snr}_dB_pump/pump/id_02/{kind}/{i:08d}.wav": kind for snr, abnormal in (("-6", 2), ("6", 1))
         for kind, n in (("normal", 5), ("abnormal", abnormal)) for i in range(n)}


def test_every_published_layout_ingests(ray_local, tmp_path):
    src, dest = tmp_path / "mixed", str(tmp_path / "clips")
    for files in LAYOUT_FILES.values():
        for rel in files:
            storage.write_bytes_atomic(str(src / rel), _wav(_tone()))
    eight = _tone(channels=8)
    eight[:, 0] = eight[:, 0] // 2  # channel 0 differs from the others: the one kept
    for rel in MIMII:
        storage.write_bytes_atomic(str(src / rel), _wav(eight))
    storage.write_bytes_atomic(str(src / "notes/session.wav"), _wav(_tone()))

    summary = ingest(IngestConfig(src=str(src), dest=dest), progress=False)
    assert summary["clips"] == sum(map(len, LAYOUT_FILES.values())) + len(MIMII)
    (reject,) = summary["rejects"]
    assert reject[0].endswith("notes/session.wav") and all(name in reject[1] for name in ("dcase2020", "mimii"))
    rows = [r for u in shards.list_shards(dest) for r in shards.read_shard(u).to_pylist()]
    seen = {(r["machine"], r["split"], r["section"], r["domain"], r["label"]) for r in rows}
    for files in LAYOUT_FILES.values():
        for rel, (split, section, domain, label) in files.items():
            assert (rel.split("/")[0], split, section, domain, label) in seen, rel
    gearbox = next(r for r in rows if r["clip_id"] == "gearbox/train/section_00_target_train_normal_0000_volt_1.3")
    assert dict(gearbox["attributes"]) == {"volt": "1.3"}

    # MIMII: 8 channels, channel 0 kept; per group (machine, SNR, id: two here, in two folders)
    # every abnormal clip and as many normal ones in test
    pump = [r for r in rows if r["machine"] == "pump"]
    assert all(r["audio"] == eight[:, 0].astype("<i2").tobytes() and r["section"] == "02" for r in pump)
    for snr, abnormal in (("-6dB", 2), ("6dB", 1)):
        group = [r for r in pump if dict(r["attributes"]) == {"snr": snr}]
        test = [r for r in group if r["split"] == "test"]
        assert sorted(r["label"] for r in test) == ["anomaly"] * abnormal + ["normal"] * abnormal, snr
        assert sum(r["split"] == "train" and r["label"] == "normal" for r in group) == 5 - abnormal, snr
    again = ingest(IngestConfig(src=str(src), dest=str(tmp_path / "again")), progress=False)
    rows_again = [r for u in shards.list_shards(again["dest"]) for r in shards.read_shard(u).to_pylist()]
    assert {r["clip_id"] for r in rows_again} == {r["clip_id"] for r in rows}  # the same split on a re-run


def test_a_folder_in_no_known_layout_is_an_error_naming_the_layouts(tmp_path):
    for name in ("a.wav", "b/c.wav"):
        storage.write_bytes_atomic(str(tmp_path / "odd" / name), _wav(_tone()))
    with pytest.raises(ValueError, match=r"none of its 2 WAV files is in a layout understood here \(dcase2022: .*"
                                         r"dcase2021: .*dcase2020: .*mimii: "):
        ingest(IngestConfig(src=str(tmp_path / "odd"), dest=str(tmp_path / "out")), progress=False)


def test_the_source_is_listed_one_folder_at_a_time_as_files_stream_out(tmp_path, monkeypatch):
    """discover lists a folder only when the files before it have been taken: the first file of a
    tree of many machine folders comes after listing the root and that file's own folders, not the
    whole tree (what lets ingest run on millions of files without holding their listing)."""
    import fsspec.implementations.local as local

    from asd_ray.ingest import WavFile, discover

    for m in range(6):
        for i in range(3):
            storage.write_bytes_atomic(str(tmp_path / "src" / f"m{m}" / "train" /
                                           f"section_00_source_train_normal_{i:04d}.wav"), _wav(_tone(0.05)))
    listed = []
    real_ls = local.LocalFileSystem.ls
    monkeypatch.setattr(local.LocalFileSystem, "ls", lambda fs, path, *a, **k: listed.append(path) or real_ls(
        fs, path, *a, **k))
    files = discover(IngestConfig(src=str(tmp_path / "src"), dest=str(tmp_path / "out")))
    first = next(files)
    assert isinstance(first, WavFile) and first.url.endswith("m0/train/section_00_source_train_normal_0000.wav")
    assert [p.rsplit("src", 1)[1] for p in listed] == ["", "/m0", "/m0/train"]
    rest = list(files)
    assert len(rest) == 6 * 3 - 1 and len(listed) == 1 + 6 * 2  # every folder once


def test_rejects_beyond_the_summary_are_all_in_the_rejects_file(ray_local, tmp_path, capsys):
    src, dest = tmp_path / "src", str(tmp_path / "clips")
    storage.write_bytes_atomic(str(src / "fan/train/section_00_source_train_normal_0000.wav"), _wav(_tone(0.05)))
    for i in range(130):
        storage.write_bytes_atomic(str(src / f"fan/train/recording_{i:03d}.wav"), _wav(_tone(0.05)))
    assert cli.main(["ingest", str(src), dest]) == 1
    out = capsys.readouterr().out
    assert "rejected 130 files" in out and out.count("unparseable name") == 100
    assert f"... and 30 more in {dest}/_rejects.csv" in out
    rejects = list(csv.reader(open(f"{dest}/_rejects.csv")))[1:]
    assert sorted(p.rsplit("/", 1)[1] for p, _ in rejects) == [f"recording_{i:03d}.wav" for i in range(130)]
    assert [r["clip_id"] for u in shards.list_shards(dest) for r in shards.read_shard(u, columns=["clip_id"])
            .to_pylist()] == ["fan/train/section_00_source_train_normal_0000"]
