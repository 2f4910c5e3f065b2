import numpy as np
import pyarrow as pa
import pytest

from asd_ray import schema


def _rows(n=2, samples=100):
    rng = np.random.default_rng(0)
    return [{"clip_id": f"fan/train/c{i}", "machine": "fan", "section": "00", "domain": "source", "split": "train",
             "label": "normal", "attributes": {"speed": "900"}, "sample_rate": 16000, "num_samples": samples,
             "audio": schema.encode_pcm16(rng.uniform(-1, 1, samples))} for i in range(n)]


def test_pcm_round_trip_is_compact_and_close():
    wave = np.sin(np.linspace(0, 20, 1000)).astype(np.float32)
    data = schema.encode_pcm16(wave)
    assert len(data) == 2000
    np.testing.assert_allclose(schema.decode_pcm16(data), wave, atol=1 / 32767)


def test_table_validates():
    table = schema.clips_table(_rows())
    schema.validate_schema(table.schema, "t")
    schema.validate_rows(table, "t")
    assert table.schema.metadata[schema.VERSION_KEY] == b"1"


def test_missing_and_mistyped_columns_are_named():
    table = schema.clips_table(_rows())
    with pytest.raises(schema.SchemaError, match="shard.parquet: missing column 'label'"):
        schema.validate_schema(table.drop(["label"]).schema, "shard.parquet")
    bad = table.set_column(table.schema.get_field_index("sample_rate"), "sample_rate",
                           pa.array(["16k", "16k"]))
    with pytest.raises(schema.SchemaError, match="column 'sample_rate' has type string, expected int32"):
        schema.validate_schema(bad.schema, "x")


def test_bad_values_name_row_and_field():
    rows = _rows(3)
    rows[2]["label"] = "broken"
    with pytest.raises(schema.SchemaError, match=r"row 2 \(fan/train/c2\): label='broken'"):
        schema.validate_rows(schema.clips_table(rows), "x")
    rows = _rows(2)
    rows[1]["num_samples"] = 99
    with pytest.raises(schema.SchemaError, match="row 1 .*audio has 200 bytes, expected 2 \\* num_samples = 198"):
        schema.validate_rows(schema.clips_table(rows), "x")


def test_unknown_labels_are_allowed_as_null():
    rows = _rows(1)
    rows[0].update(label=None, domain=None, split="test")
    schema.validate_rows(schema.clips_table(rows), "x")


@pytest.mark.parametrize("column,value", [("machine", "../../x"), ("machine", "fan_2"), ("machine", ""),
                                          ("section", "0"), ("section", "../00")])
def test_names_that_would_become_unsafe_file_names_are_refused(column, value):
    rows = _rows(3)
    rows[2][column] = value
    table = schema.clips_table(rows)
    with pytest.raises(schema.SchemaError, match=f"shard.parquet: row 2 \\(fan/train/c2\\): {column}={value!r}: "
                                                  "expected"):
        schema.validate_rows(table, "shard.parquet")
    schema.validate_rows(schema.clips_table(_rows(3)), "shard.parquet")  # DCASE-style names pass
    assert schema.name_problem("machine", "ToyCar-2") is None and schema.name_problem("section", "07") is None
