"""PyTorch weights are read weights-only: a malicious pickle never runs its code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from jaxlrp.convert import load_efficientnet_lite0_torch, load_torch_state_dict
from jaxlrp.errors import ExplanationError

pytestmark = pytest.mark.crosscheck


class _Marker:
    """Unpickling this calls ``Path.touch(path)``: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("fmt", ["torch-zip", "legacy-pickle", "raw-pickle"])
@pytest.mark.parametrize("loader", [load_torch_state_dict, load_efficientnet_lite0_torch],
                         ids=["state_dict", "efficientnet"])
def test_malicious_checkpoint_is_rejected_without_running_code(tmp_path, fmt, loader):
    marker = tmp_path / "PWNED"
    payload = {"conv.weight": torch.ones(2, 2), "evil": _Marker(marker)}
    path = tmp_path / "evil.pth"
    if fmt == "torch-zip":
        torch.save(payload, path)
    elif fmt == "legacy-pickle":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ExplanationError, match="path"):
        loader(path)
    assert not marker.exists()
    # the payload is live: an unrestricted torch.load really runs it
    torch.load(path, weights_only=False) if fmt != "raw-pickle" else pickle.loads(
        path.read_bytes())
    assert marker.exists()


def test_plain_tensors_still_load(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}}, path)
    out = load_torch_state_dict(path)
    assert list(out) == ["w"] and out["w"].shape == (2, 3) and out["w"][1, 2] == 5.0
