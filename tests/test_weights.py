"""Weight files entering a model (useg.weights): official and useg files, one shape check, one finite check."""

from pathlib import Path

import pytest
import torch

from test_model import TINY, make_inputs, seeded_model
from useg.checkpoint import publish_export, sha256_bytes
from useg.errors import CheckpointError
from useg.model import build_universeg, model_config
from useg.weights import fit_weights, infer_widths, load_pretrained, require_finite


def test_infer_widths():
    assert infer_widths(build_universeg((4, 8, 12)).state_dict()) == (4, 8, 12)
    assert infer_widths({"weight": torch.zeros(3)}) is None


def test_official_format_file_round_trips(tmp_path):
    saved = seeded_model(0)
    path = tmp_path / "universeg_v1.pt"
    torch.save(saved.state_dict(), path)
    loaded = seeded_model(1)
    load_pretrained(loaded, path)
    inputs = make_inputs(batch=1, support=2, size=16)
    torch.testing.assert_close(loaded(*inputs), saved(*inputs), atol=0, rtol=0)


def test_our_checkpoint_dict_with_model_state_dict_loads(tmp_path):
    saved = seeded_model(0, widths=TINY)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": saved.state_dict(), "model_config": model_config(saved)}, path)
    loaded = seeded_model(1, widths=TINY)
    load_pretrained(loaded, path)
    inputs = make_inputs(size=16)
    torch.testing.assert_close(loaded(*inputs), saved(*inputs), atol=0, rtol=0)


def test_wrong_widths_file_is_refused_naming_mismatch_and_needed_widths(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(build_universeg((16, 16, 16, 16)).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(build_universeg(TINY), path)
    message = str(info.value)
    assert "enc_blocks.0.cross.cross_conv.weight: file 16x3x3x3, model 8x3x3x3" in message
    assert "--widths 16,16,16,16" in message
    assert message.index("--widths 16,16,16,16") < message.index("enc_blocks")  # the remedy before the detail
    assert "\n" not in message


def test_missing_or_corrupt_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(build_universeg(TINY), tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_pretrained(build_universeg(TINY), corrupt)


def _leave_marker(path):
    Path(path).write_text("code ran while loading")
    return {}


class CodeOnLoad:
    """Unpickling this runs `_leave_marker`: exactly what weights_only must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_file_needing_unsafe_unpickling_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "unsafe.pt"
    torch.save({"model_state_dict": CodeOnLoad(marker)}, path)
    with pytest.raises(CheckpointError, match="unsafe unpickling") as info:
        load_pretrained(build_universeg(TINY), path)
    assert "unsafe.pt" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def with_nan(state_dict: dict, name: str) -> dict:
    state_dict = dict(state_dict)
    state_dict[name] = state_dict[name].clone()
    state_dict[name].view(-1)[0] = float("nan")
    return state_dict


def test_nan_weights_are_refused_in_one_message_naming_the_file_and_parameter(tmp_path):
    name = "dec_blocks.0.cross.cross_conv.weight"
    path = tmp_path / "diverged.pt"
    torch.save(with_nan(build_universeg(TINY).state_dict(), name), path)
    with pytest.raises(CheckpointError) as loaded:
        load_pretrained(build_universeg(TINY), path)
    with pytest.raises(CheckpointError) as exported:
        require_finite(torch.load(path, weights_only=True), path, refused="exported")
    for error, refused in ((loaded, "loaded"), (exported, "exported")):
        message = str(error.value)
        assert message.startswith(f"{path} holds NaN or inf in {name} (a diverged run) and was not {refused}; ")
        assert "\n" not in message
    require_finite(build_universeg(TINY).state_dict(), path)  # finite weights pass


def test_weights_that_do_not_fit_their_own_config_are_refused_as_mixed_up(tmp_path):
    weights = build_universeg((8, 8)).state_dict()
    model = build_universeg((16, 16))
    with pytest.raises(CheckpointError, match=r"ckpt.pt: its weights \(widths 8,8\) do not fit its model_config "
                                              r"\(widths 16,16\); the file was edited or mixed up"):
        fit_weights(model, weights, tmp_path / "ckpt.pt", own_config=True)
    with pytest.raises(CheckpointError, match="widths unknown"):
        fit_weights(model, {"weight": torch.zeros(3)}, tmp_path / "ckpt.pt", own_config=True)


def test_an_export_is_verified_against_its_metadata_before_loading(tmp_path):
    saved = seeded_model(0, widths=TINY)
    path = tmp_path / "exported.pt"
    torch.save(saved.state_dict(), path)
    data = path.read_bytes()
    publish_export(path, data, {"weights": path.name, "sha256": sha256_bytes(data), "size_bytes": len(data),
                                "source": "best_model.pt", "model_config": model_config(saved)})
    loaded = seeded_model(1, widths=TINY)
    load_pretrained(loaded, path)
    inputs = make_inputs(size=16)
    torch.testing.assert_close(loaded(*inputs), saved(*inputs), atol=0, rtol=0)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="weight file refused: .*exported.pt: corrupt"):
        load_pretrained(loaded, path)
