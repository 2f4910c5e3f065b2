import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from asd_ray import schema, shards
from asd_ray.ingest import parse_name
from asd_ray.synth.generate import SUITES, Block, SynthConfig, fault_of, plan, render_block, shard_jobs
from asd_ray.synth.machines import MACHINES


def _audio(rows):
    return np.stack([schema.decode_pcm16(r["audio"]) for r in rows])


def test_deterministic_for_a_seed(tiny_synth_config):
    cfg = tiny_synth_config("unused")
    block = Block("pump", 0, "test", "source", "anomaly", 0, 4)
    a, b = render_block(cfg, block), render_block(cfg, block)
    assert [r["audio"] for r in a] == [r["audio"] for r in b]
    other = render_block(cfg.model_copy(update={"seed": 1}), block)
    assert [r["audio"] for r in other] != [r["audio"] for r in a]


def test_plan_counts_and_shard_size_do_not_change_audio(tiny_synth_config):
    cfg = tiny_synth_config("out")
    blocks = plan(cfg)
    assert sum(b.count for b in blocks) == 2 * (20 + 4 + 2 * (4 + 4))
    small = shard_jobs(cfg.model_copy(update={"shard_mb": 0.3}), blocks, "g1")
    big = shard_jobs(cfg, blocks, "g1")
    assert len(small) > len(big) == 4  # one shard per (split, machine) at 64 MB
    # indices count within each partition: a partition's names do not depend on the others
    assert sorted(u.rsplit("/", 3)[-1] for u, _ in big) == ["synth-00000-g1.parquet"] * 4
    assert {u.rsplit("/", 1)[-1] for u, _ in small if "split=train/machine=pump/" in u} >= {
        "synth-00000-g1.parquet", "synth-00001-g1.parquet"}
    assert sorted(b for _, bl in small for b in bl) == sorted(b for _, bl in big for b in bl)


def test_names_follow_dcase_and_domains_shift(tiny_synth_config):
    cfg = tiny_synth_config("out")
    for machine in MACHINES:
        src = render_block(cfg, Block(machine, 0, "train", "source", "normal", 0, 8))
        tgt = render_block(cfg, Block(machine, 0, "train", "target", "normal", 0, 8))
        for row in src + tgt:
            meta = parse_name(machine, "train", row["clip_id"].split("/")[-1])
            assert meta["attributes"] == row["attributes"] and meta["domain"] == row["domain"]
        src_values = {tuple(sorted(r["attributes"].items())) for r in src}
        tgt_values = {tuple(sorted(r["attributes"].items())) for r in tgt}
        assert not src_values & tgt_values  # target operating conditions never seen in source


def test_attributes_audibly_change_the_sound(tiny_synth_config):
    """Operating conditions are audible: a nearest-centroid classifier on band energies tells
    the first attribute (speed, cycle rate, load) of held-out clips, for every machine type."""
    cfg = tiny_synth_config("out")
    for machine in MACHINES:
        rows = render_block(cfg, Block(machine, 0, "train", "source", "normal", 0, 16)) + render_block(
            cfg, Block(machine, 0, "train", "source", "normal", 16, 16))
        spec = np.abs(np.fft.rfft(_audio(rows), axis=-1)) ** 2
        bands = spec[:, :16000].reshape(len(rows), 4000, 4).sum(-1)  # 2 Hz bands below 8 kHz
        bands = np.sqrt(bands / bands.sum(-1, keepdims=True))
        speeds = np.array([r["attributes"][MACHINES[machine].attributes[0].name] for r in rows])
        fit, held = np.arange(0, 32, 2), np.arange(1, 32, 2)
        values = sorted(set(speeds[fit]))
        centroids = np.stack([bands[fit][speeds[fit] == v].mean(0) for v in values])
        guess = np.array(values)[np.argmin(((bands[held, None] - centroids) ** 2).sum(-1), axis=1)]
        assert (guess == speeds[held]).mean() > 0.8, machine


def test_anomalies_are_not_found_by_loudness_but_by_content(tiny_synth_config):
    cfg = tiny_synth_config("out", clip_seconds=2.0)
    for machine in MACHINES:
        normal = _audio(render_block(cfg, Block(machine, 0, "test", "source", "normal", 0, 16))
                        + render_block(cfg, Block(machine, 0, "test", "source", "normal", 16, 16)))
        anomal = _audio(render_block(cfg, Block(machine, 0, "test", "source", "anomaly", 0, 16))
                        + render_block(cfg, Block(machine, 0, "test", "source", "anomaly", 16, 16)))
        labels = np.r_[np.zeros(len(normal)), np.ones(len(anomal))]
        x = np.concatenate([normal, anomal])
        rms_auc = roc_auc_score(labels, np.sqrt((x ** 2).mean(-1)))
        assert 0.3 < rms_auc < 0.7, (machine, rms_auc)
        # a content detector (distance of the log spectrum to the normal mean) does find them
        logspec = np.log(np.abs(np.fft.rfft(x / np.sqrt((x ** 2).mean(-1, keepdims=True)), axis=-1))[:, ::8] + 1e-3)
        ref = logspec[: len(normal) // 2].mean(0)
        held = np.r_[np.arange(len(normal) // 2, len(normal)), np.arange(len(normal), len(x))]
        dist = np.linalg.norm(logspec[held] - ref, axis=-1)
        assert roc_auc_score(labels[held], dist) > 0.6, machine


def test_difficulty_scales_the_faults(tiny_synth_config):
    block = Block("gearbox", 0, "test", "source", "anomaly", 0, 3)
    easy = _audio(render_block(tiny_synth_config("o", difficulty=0.0), block))
    hard = _audio(render_block(tiny_synth_config("o", difficulty=1.0), block))
    normal = _audio(render_block(tiny_synth_config("o"), Block("gearbox", 0, "test", "source", "normal", 0, 8)))
    def spec(x):
        s = np.abs(np.fft.rfft(x, axis=-1))
        return s / s.sum(-1, keepdims=True)
    ref = spec(normal).mean(0)
    assert np.abs(spec(easy) - ref).sum(-1).mean() > np.abs(spec(hard) - ref).sum(-1).mean()


def test_synth_to_s3_and_back_is_byte_identical(ray_local, bucket, tiny_synth_config, tmp_path):
    from asd_ray.synth.generate import synthesize

    s3 = synthesize(tiny_synth_config(f"{bucket}/synth"), progress=False)
    local = synthesize(tiny_synth_config(str(tmp_path / "synth")), progress=False)
    assert s3["clips"] == local["clips"] == 2 * (20 + 4 + 16)

    def read_all(root):
        urls = shards.list_shards(root)
        table = __import__("pyarrow").concat_tables([shards.read_shard(u) for u in urls])
        return dict(zip(table["clip_id"].to_pylist(), table["audio"].to_pylist()))

    from_s3, from_local = read_all(f"{bucket}/synth"), read_all(str(tmp_path / "synth"))
    assert len(from_s3) == s3["clips"] and from_s3 == from_local
    assert len(shards.list_shards(f"{bucket}/synth", split="test", machine="fan")) == 1


def test_rerun_replaces_without_duplicates(ray_local, tiny_synth_config, tmp_path):
    from asd_ray.synth.generate import synthesize

    out = str(tmp_path / "d")
    synthesize(tiny_synth_config(out, shard_mb=0.1), progress=False)
    many = shards.list_shards(out)
    synthesize(tiny_synth_config(out), progress=False)  # bigger shards: fewer files
    few = shards.list_shards(out)
    assert len(few) < len(many)
    ids = [i for u in few for i in pq.read_table(u, columns=["clip_id"])["clip_id"].to_pylist()]
    assert len(ids) == len(set(ids)) == 80


def test_hidden_attributes_change_the_names_not_the_sound(tiny_synth_config):
    block = Block("fan", 0, "train", "target", "normal", 0, 4)
    named = render_block(tiny_synth_config("out"), block)
    hidden = render_block(tiny_synth_config("out", named_attributes=False), block)
    assert [r["audio"] for r in hidden] == [r["audio"] for r in named]
    for row in hidden:
        assert row["attributes"] == {} and row["clip_id"].endswith("_noAttribute")
        assert parse_name("fan", "train", row["clip_id"].split("/")[-1])["attributes"] == {}


def test_tune_and_confirm_suites_split_the_world():
    """Settings are chosen on one part of the synthetic world and confirmed on another: no machine
    type in both, every machine type in one, other seeds, several kinds of domain shift in each;
    a plain synth run makes the tune suite's first four machine types."""
    tune, confirm = SUITES["tune"], SUITES["confirm"]
    assert not set(tune.machines) & set(confirm.machines) and tune.seed != confirm.seed
    assert sorted(tune.machines + confirm.machines) == sorted(MACHINES)
    assert SynthConfig().machines == list(tune.machines[:4])

    def kinds(machines):
        return {kind for m in machines for kind in MACHINES[m].shift or ("operating conditions only",)}

    assert len(kinds(confirm.machines)) == len(confirm.machines)  # each confirm machine type shifts its own way
    assert len(kinds(tune.machines)) >= 3


def test_microphone_shift_changes_the_target_domain_only(tiny_synth_config):
    """The press's target domain is heard through another microphone: its spectrum's balance moves
    (more self-noise hiss above its cut-off), while the source domain has no such change."""
    cfg = tiny_synth_config("out")

    def high_share(domain):
        x = _audio(render_block(cfg, Block("press", 0, "train", domain, "normal", 0, 8)))
        spec = np.abs(np.fft.rfft(x, axis=-1)) ** 2
        return (spec[:, 2 * 6000:].sum(-1) / spec.sum(-1)).mean()  # 0.5 Hz bins: above 6 kHz

    assert "microphone" in MACHINES["press"].shift
    assert high_share("target") > 3 * high_share("source")


def test_fault_family_of_a_clip(tiny_synth_config):
    cfg = tiny_synth_config("out")
    rows = render_block(cfg, Block("valve", 0, "test", "target", "anomaly", 16, 6))
    assert [fault_of("valve", r["clip_id"]) for r in rows] == [MACHINES["valve"].anomalies[i % 3]
                                                               for i in range(16, 22)]
