"""The README's first command, shrunk: `asd-ray demo` end to end on local folders."""

import os

from asd_ray import cli


def test_demo_runs_every_stage_and_reports(ray_local, tmp_path, capsys):
    work = str(tmp_path / "demo")
    code = cli.main(["demo", f"workdir={work}", "synth.clip_seconds=1", "synth.machines=[fan,gearbox]",
                     "synth.counts={train_source: 16, train_target: 4, test_normal: 4, test_anomaly: 4}",
                     "train.epochs=1", "train.batch_size=8", "train.clip_seconds=1", "train.n_subclusters=2",
                     "train.model={emb_dim: 16, n_fft: 256, hop_length: 128, fft_channels: [4, 8, 8], "
                     "spec_channels: [4, 8], freq_width: 8, time_width: 8}",
                     "train.autoencoder_epochs=1", "train.autoencoder={n_mels: 32, hidden: 32}"])
    out = capsys.readouterr().out
    assert code == 0
    for stage in ("[1/4] synthesizing", "[2/4] training", "[3/4] fitting", "[4/4] evaluating", "official score"):
        assert stage in out
    assert "| fan | 00 |" in out and "| gearbox | 00 |" in out
    assert "companion 'autoencoder'" in out
    for path in ("data/_manifest.json", "runs/demo/model/bundle.json", "runs/demo/model/autoencoder/bundle.json",
                 "scores/manifest.json",
                 "scores/anomaly_score_fan_section_00_test.csv", "scores/evaluation/report.md",
                 "scores/evaluation/roc_gearbox.png"):
        assert os.path.exists(os.path.join(work, path)), path
