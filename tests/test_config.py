import pytest

from useg.config import TrainConfig, build_config, changed_keys, incompatible_keys, read_config_file
from useg.errors import ConfigError


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nbatch-size: 3\nwidths: [16, 16, 16]\n")
    cfg = build_config(read_config_file(path), {"epochs": 9, "batch_size": None})
    assert (cfg.epochs, cfg.batch_size, cfg.widths) == (9, 3, [16, 16, 16])
    assert cfg.lr == TrainConfig().lr


def test_toml_config_and_comma_widths(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('widths = "8,8"\nimage_size = 32\n')
    cfg = build_config(read_config_file(path))
    assert cfg.widths == [8, 8] and cfg.image_size == 32


@pytest.mark.parametrize("text, words", [
    ("epochs: [1\n", "not valid YAML"),
    ("epoch: 3\n", "unknown key(s) epoch"),
    ("- 1\n", "mapping"),
])
def test_bad_config_file_is_one_clear_error(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_config_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_config_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("layer, flag", [
    ({"epochs": 0}, "--epochs"),
    ({"image_size": 30, "widths": "8,8,8"}, "--image-size"),
    ({"widths": "a,b"}, "--widths"),
    ({"seed": -1}, "--seed"),
    ({"lr": 0.0}, "--lr"),
])
def test_invalid_values_name_the_flag(layer, flag):
    with pytest.raises(ConfigError, match=flag):
        build_config(layer)


def test_incompatible_keys_ignore_harmless_changes():
    saved = TrainConfig().to_dict()
    cfg = build_config(saved, {"epochs": 99, "quiet": True, "widths": "16,16,16,16"})
    assert incompatible_keys(saved, cfg) == ["widths"]
    assert changed_keys(saved, cfg)["epochs"] == [saved["epochs"], 99]
