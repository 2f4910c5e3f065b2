import json

import pytest

from asd_ray.config import ConfigError, load_config, parse_overrides
from asd_ray.synth.generate import SynthConfig


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "name=x", "flag=true"]) == {
        "a": {"b": 3, "c": [1, 2]}, "name": "x", "flag": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["nonsense"])


def test_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "synth.yaml"
    path.write_text("out: /from/file\nclip_seconds: 4\ncounts:\n  test_normal: 7\n")
    cfg = load_config(SynthConfig, path, ["counts.test_anomaly=3", "clip_seconds=2.5"], out="/from/flag")
    assert (cfg.out, cfg.clip_seconds, cfg.counts.test_normal, cfg.counts.test_anomaly) == ("/from/flag", 2.5, 7, 3)
    json_path = tmp_path / "synth.json"
    json_path.write_text(json.dumps({"seed": 5}))
    assert load_config(SynthConfig, json_path).seed == 5


@pytest.mark.parametrize("override, field", [
    (["clip_seconds=-1"], "clip_seconds"),
    (["counts.train_source=many"], "counts.train_source"),
    (["machines=[toaster]"], "machines"),
    (["no_such_field=1"], "no_such_field"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(SynthConfig, None, override)
    assert f"  {field}:" in str(err.value)


def test_malformed_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("out: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(SynthConfig, path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SynthConfig, path)


def test_num_workers_is_a_count_or_an_elastic_range():
    """``num_workers=[min, max]`` reaches Ray Train as an elastic ScalingConfig; a reversed or
    empty range is an error naming the field."""
    from asd_ray.labels import LabelMap
    from asd_ray.train import TrainConfig, make_trainer

    cfg = load_config(TrainConfig, None, ["num_workers=[1, 3]", "resize_check_s=5"])
    assert cfg.num_workers == (1, 3) and cfg.max_workers == 3
    scaling = make_trainer(cfg, LabelMap(classes=["a", "b"])).scaling_config
    assert scaling.num_workers == (1, 3) and scaling.elastic_resize_monitor_interval_s == 5
    assert load_config(TrainConfig, None, ["num_workers=2"]).max_workers == 2
    for bad in ("[3, 1]", "[0, 2]", "0"):
        with pytest.raises(ConfigError, match="num_workers"):
            load_config(TrainConfig, None, [f"num_workers={bad}"])
