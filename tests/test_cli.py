"""The ``jaxlrp`` command line, end to end (``python -m jaxlrp`` in a subprocess) and
in-process for the cheap checks (help texts, usage errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxlrp import checkpoint, cli
from jaxlrp.data import embedded
from jaxlrp.models import VGG

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "jaxlrp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A small random-init VGG checkpoint, 3 embedded test images as PNG, a truncated PNG
    and a text file."""
    root = tmp_path_factory.mktemp("cli")
    from flax import nnx

    model = VGG(num_classes=8, widths=(8, 16), dense=(16,), input_size=64,
                rngs=nnx.Rngs(3))
    checkpoint.save(root / "vgg.msgpack", model, metadata={"dataset": "embedded"})
    data = embedded("test", n=3, seed=0)
    images = root / "images"
    images.mkdir()
    for i, im in enumerate(data.images):
        Image.fromarray(np.round(im * 255).astype(np.uint8)).save(images / f"img{i}.png")
    good = (images / "img0.png").read_bytes()
    (images / "broken.png").write_bytes(good[: len(good) // 3])  # truncated
    (images / "notes.txt").write_text("not an image\n")
    return root


@pytest.mark.slow
def test_explain_writes_maps_and_reports_bad_files(workdir: Path):
    images = workdir / "images"
    out = workdir / "out"
    inputs = ["img0.png", "notes.txt", "img1.png", "broken.png", "img2.png"]
    r = run_cli("explain", *[str(images / f) for f in inputs], "--model",
                str(workdir / "vgg.msgpack"), "--out", str(out), "--batch-size", "2",
                "--no-progress", cwd=workdir)
    assert r.returncode == 1, r.stderr  # some files failed (documented exit code 1)
    assert "Traceback" not in r.stderr
    assert "notes.txt" in r.stderr and "broken.png" in r.stderr
    summary = json.loads((out / "errors.json").read_text())
    assert sorted(Path(f["path"]).name for f in summary["failed"]) == ["broken.png",
                                                                      "notes.txt"]
    assert summary["explained"] == 3
    for i in range(3):
        for suffix in ("hybrid.npy", "hybrid.png", "compare.png"):  # compare: on for hybrid
            assert (out / f"img{i}_{suffix}").is_file()
    assert not list(out.glob("notes*")) and not list(out.glob("broken*"))
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    # one stdout line per explained image: file, predicted label, probability, outputs
    lines = [ln for ln in r.stdout.splitlines() if " -> " in ln]
    assert [ln.split(":")[0] for ln in lines] == [str(images / f"img{i}.png") for i in range(3)]
    for i, ln in enumerate(lines):
        assert "(class " in ln and ", p=" in ln
        written = ln.split(" -> ")[1].split(", ")
        assert written == [str(out / f"img{i}_{s}") for s in ("hybrid.npy", "hybrid.png",
                                                               "compare.png")]
    with Image.open(out / "img0_hybrid.png") as im:
        assert im.size == (480, 400)
    with Image.open(out / "img0_compare.png") as im:
        assert im.size == (1280, 360)  # input + 3 panels of 3.2 in at 100 dpi

    # The stored map is the hybrid of that very image (not of another one in the batch).
    from jaxlrp._hybrid import hybrid

    model = checkpoint.load(workdir / "vgg.msgpack")
    x = np.stack([np.asarray(Image.open(images / f"img{i}.png"), np.float32) / 255.0
                  for i in range(3)])
    expected = np.asarray(hybrid(model, x))
    for i in range(3):
        got = np.load(out / f"img{i}_hybrid.npy")
        assert got.shape == (64, 64) and got.dtype == np.float32
        # jit of the same float32 computation in another process and batch: ~1e-6
        np.testing.assert_allclose(got, expected[i], atol=1e-4)

    # Resume: delete one output; a rerun recomputes only that image, leaves the others.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("img[12]_*")}
    (out / "img0_hybrid.npy").unlink()
    r = run_cli("explain", *[str(images / f) for f in inputs], "--model",
                str(workdir / "vgg.msgpack"), "--out", str(out), "--batch-size", "2",
                "--no-progress", cwd=workdir)
    assert r.returncode == 1, r.stderr  # the two bad files still fail
    assert "1 explained, 2 already done, 2 failed" in r.stdout
    assert (out / "img0_hybrid.npy").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("img[12]_*")} == stamps


def test_explain_json_lines(workdir: Path, capsys):
    out = workdir / "json"
    code = cli.main(["explain", str(workdir / "images" / "img0.png"),
                     str(workdir / "images" / "img1.png"), "--method", "gradcam", "--model",
                     str(workdir / "vgg.msgpack"), "--out", str(out), "--json",
                     "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    rows = [json.loads(line) for line in captured.out.splitlines()]  # only JSON on stdout
    assert [Path(r["file"]).name for r in rows] == ["img0.png", "img1.png"]
    model = checkpoint.load(workdir / "vgg.msgpack")
    x = np.stack([np.asarray(Image.open(workdir / "images" / f"img{i}.png"), np.float32)
                  / 255.0 for i in range(2)])
    logits = np.asarray(model(x), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for i, r in enumerate(rows):
        assert r["class"] == int(probs[i].argmax())
        assert r["label"] == embedded("test", n=1).class_names[r["class"]]
        assert r["probability"] == pytest.approx(probs[i].max(), abs=1e-4)
        assert r["outputs"] == [str(out / f"img{i}_gradcam.npy"),
                                str(out / f"img{i}_gradcam.png")]
        assert all(Path(f).is_file() for f in r["outputs"])
    assert "2 explained" in captured.err  # the summary goes to stderr with --json


def test_default_composite_is_the_models_registry_entry(workdir: Path):
    from jaxlrp.cli.loading import load_model
    from jaxlrp.models.registry import CHECKPOINT_COMPOSITE, SHIPPED, entry

    assert entry("efficientnet-lite0").composite == "epsilon_plus_flat"
    assert entry("efficientnet_lite0") is SHIPPED["efficientnet-lite0"]
    assert entry("default").composite == "paper"
    assert entry("convnext").composite == entry("vit").composite == "attn_lrp"
    assert load_model(str(workdir / "vgg.msgpack")).composite == CHECKPOINT_COMPOSITE
    args = cli.build_parser().parse_args(["explain", "a.png"])  # hybrid, compare on
    plan = cli.make_plan(args).with_default_composite("epsilon_plus_flat")
    assert plan.options["composite"] == plan.hybrid_options["composite"] == (
        "epsilon_plus_flat")
    args = cli.build_parser().parse_args(["explain", "a.png", "--composite", "epsilon"])
    plan = cli.make_plan(args).with_default_composite("epsilon_plus_flat")
    assert plan.options["composite"] == plan.hybrid_options["composite"] == "epsilon"
    args = cli.build_parser().parse_args(["explain", "a.png", "--method", "gradcam"])
    plan = cli.make_plan(args).with_default_composite("epsilon_plus_flat")
    assert plan.options == {}  # no LRP in a Grad-CAM map


def test_explain_all_done_needs_no_model(workdir: Path, capsys):
    out = workdir / "done"
    out.mkdir()
    for name in ("img0_gradcam_pp.npy", "img0_gradcam_pp.png"):
        (out / name).write_bytes(b"x")
    # The model path does not exist, but nothing is left to do: exit 0, nothing loaded.
    code = cli.main(["explain", str(workdir / "images" / "img0.png"), "--method", "gradcam++",
                     "--model", str(workdir / "missing.msgpack"), "--out", str(out)])
    assert code == 0
    assert "0 explained, 1 already done, 0 failed" in capsys.readouterr().out
    assert (out / "img0_gradcam_pp.npy").read_bytes() == b"x"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["explain", "a.png", "--model", "resnet9000"], "--model"),
        (["explain", "a.png", "--method", "saliency"], "--method"),
        (["explain", "a.png", "--target", "cat"], "--target"),
        (["explain", "a.png", "--batch-size", "0"], "--batch-size"),
        (["explain", "a.png", "--threshold", "1.5"], "--threshold"),
        (["explain", "a.png", "--method", "gradcam", "--threshold", "0.3"], "--threshold"),
        (["explain", "a.png", "--composite", "zigzag"], "--composite"),
        (["train", "--epochs", "-1"], "--epochs"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_target_out_of_range_and_missing_checkpoint(workdir: Path, capsys):
    img = str(workdir / "images" / "img0.png")
    code = cli.main(["explain", img, "--model", str(workdir / "vgg.msgpack"), "--target",
                     "8", "--out", str(workdir / "t8")])
    err = capsys.readouterr().err
    assert code == 2 and "--target" in err and "0..7" in err
    code = cli.main(["explain", img, "--model", str(workdir / "nope.msgpack"), "--out",
                     str(workdir / "t9")])
    err = capsys.readouterr().err
    assert code == 2 and "--model" in err and "nope.msgpack" in err
    assert len(err.strip().splitlines()) == 1


def test_usage_error_exit_code_through_python_m(tmp_path: Path):
    r = run_cli("explain", "x.png", "--model", "no-such-model", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--model" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "command, options",
    [
        ([], ["explain", "demo", "train", "info"]),
        (["info"], []),
        (["train"], ["--epochs", "--out", "--train-examples", "--seed", "--batch-norm"]),
        (["explain"], ["--model", "--method", "--target", "--out", "--batch-size",
                       "--compare", "--overwrite", "errors.json", "Exit code"]),
        (["demo"], ["--out", "--quick"]),
    ],
)
def test_help(command, options, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args([*command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert cli.main([*command, "--help"]) == 0
    for opt in options:
        assert opt in text


def test_evaluate_subcommand_is_registered(capsys):
    # jaxlrp.evaluation ships with the package (its dependencies are the core's): it must
    # import, and the parser must expose its subcommand with the driver's options
    import jaxlrp.evaluation as evaluation
    from jaxlrp.cli import evaluate as cli_evaluate

    assert callable(evaluation.evaluate)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "evaluate" in sub.choices
    assert cli.main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--explainers", "--metrics", "--n", "--target", "--no-resume"):
        assert opt in out
    ns = parser.parse_args(["evaluate", "--n", "7"])
    assert ns.func is cli_evaluate.run_cli and ns.n == 7


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("jax", "flax", "devices", "efficientnet-lite0", "embedded", "hybrid",
                 "chelsea"):
        assert word in out


def test_make_plan_binds_only_applicable_options():
    args = cli.build_parser().parse_args(
        ["explain", "a.png", "--method", "lrp", "--composite", "epsilon_plus_flat", "--compare"])
    plan = cli.make_plan(args)
    assert plan.options == {"composite": "epsilon_plus_flat"}
    assert plan.hybrid_options == {"composite": "epsilon_plus_flat"}
    assert plan.panels() == ["gradcam++", "lrp", "hybrid"]
    args = cli.build_parser().parse_args(["explain", "a.png", "--method", "gradcam"])
    plan = cli.make_plan(args)
    assert not plan.compare and plan.options == {}
    args = cli.build_parser().parse_args(["explain", "a.png", "--method", "layercam",
                                          "--compare"])
    assert cli.make_plan(args).panels() == ["layercam", "lrp", "hybrid"]
    assert cli.file_token("gradcam++") == "gradcam_pp"
    assert cli.unique_stems([Path("a/x.png"), Path("b/x.jpg"), Path("y.png")]) == [
        "x", "x-2", "y"]


@pytest.mark.slow
def test_demo_quick(tmp_path: Path):
    from jaxlrp.models.default import DEFAULT_PATH

    r = run_cli("demo", "--quick", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert "Traceback" not in r.stderr
    assert "chelsea: predicted 'Egyptian cat'" in r.stdout
    # the demo explains each model with its registry composite, as explain does
    assert "bundled photos (LRP composite epsilon_plus_flat)" in r.stdout
    photos = sorted(p.name for p in (tmp_path / "demo" / "photos").glob("*.png"))
    assert photos == ["chelsea_compare.png", "coffee_compare.png"]
    assert (tmp_path / "demo" / "photos_grid.png").is_file()
    from jaxlrp.models import convnext, vit

    # the ConvNeXt and ViT parts use their registry composite (AttnLRP: LayerNorm, GELU,
    # attention)
    assert "ConvNeXt on embedded test images (LRP composite attn_lrp)" in r.stdout
    assert "ViT on embedded test images (LRP composite attn_lrp)" in r.stdout
    parts = ((DEFAULT_PATH, "embedded"), (convnext.PATH, "embedded_convnext"),
             (vit.PATH, "embedded_vit"))
    for path, folder in parts:
        if path.is_file():
            assert len(list((tmp_path / "demo" / folder).glob("*_compare.png"))) == 4
            assert (tmp_path / "demo" / f"{folder}_grid.png").is_file()
    if all(path.is_file() for path, _ in parts):
        assert r.returncode == 0, r.stderr
    else:  # a shipped model is missing: reported, the other parts still written
        assert r.returncode == 1 and "checkpoint" in r.stderr + r.stdout


@pytest.mark.slow
def test_explain_killed_mid_run_resumes_without_redoing_finished_images(workdir: Path):
    """SIGKILL a long ``explain`` run after some outputs exist; the rerun keeps them."""
    import signal
    import time

    images = workdir / "many"
    images.mkdir()
    data = embedded("test", n=48, seed=1)
    for i, im in enumerate(data.images):
        Image.fromarray(np.round(im * 255).astype(np.uint8)).save(images / f"m{i:02d}.png")
    out = workdir / "killed"
    args = [sys.executable, "-m", "jaxlrp", "explain", str(images), "--model",
            str(workdir / "vgg.msgpack"), "--method", "gradcam", "--out", str(out),
            "--batch-size", "4", "--no-progress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("*_gradcam.npy"))) < 8:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in out.glob("*_gradcam.npy"))
    assert 8 <= len(finished) < 48, "the run was not interrupted mid-way"
    for name in finished:  # atomic writes: every file present is complete
        assert np.load(out / name).shape == (64, 64)
    stamps = {n: (out / n).stat().st_mtime_ns for n in finished}
    # an image is complete when its map and its figure exist (the kill may fall between)
    done_pairs = [n for n in finished if (out / n.replace(".npy", ".png")).is_file()]
    r = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*_gradcam.npy"))) == 48
    # images whose outputs were complete before the kill are not recomputed
    for n in done_pairs:
        assert (out / n).stat().st_mtime_ns == stamps[n]
    assert f"{len(done_pairs)} already done" in r.stdout
    assert not list(out.glob(".*.tmp"))  # temporaries of the killed run are cleaned up
