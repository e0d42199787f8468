"""Image folders streamed from files (issue 14): --dataset imagenet and tiny-imagenet, a
split's x decoded on indexing (data/stream.py), read through DataLoader workers in training,
evaluation and BatchNorm passes. Tiny fake folders of generated JPEG and PNG files only."""

import multiprocessing
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from swamp.app.cli import main  # noqa: E402
from swamp.data import FileImages, FileOptions, batches_of, load_dataset  # noqa: E402
from swamp.data.files import IMAGENET_STATS  # noqa: E402
from swamp.engines import LevelTask, SequentialEngine  # noqa: E402
from swamp.errors import SwampError  # noqa: E402
from swamp.loop import LevelLoop, run  # noqa: E402
from swamp.store import RunStore  # noqa: E402
from swamp.train import stop as stops  # noqa: E402
from test_engines import assert_results_close, level_task  # noqa: E402

WNIDS = ["n01", "n02", "n03"]
SIDE = 8


def _image(rng, c: int, w: int = SIDE, h: int = SIDE) -> Image.Image:
    """Class c: grey level 40 + 80 c plus noise, so the label can be read from the pixels."""
    return Image.fromarray((40 + 80 * c + rng.integers(0, 20, (h, w, 3))).astype(np.uint8))


def imagenet_folder(root: Path, per_class: int = 6, val: int = 2) -> Path:
    """train/<wnid>/*, val/<wnid>/*: JPEGs (quality 100 still lossy: decoded either way the
    same) and PNGs."""
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        for split, n in (("train", per_class), ("val", val)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ext = "JPEG" if i % 2 == 0 else "png"
                _image(rng, c).save(root / split / wnid / f"{wnid}_{i}.{ext}")
    return root


def tiny_folder(root: Path, side: int = 12) -> Path:
    rng = np.random.default_rng(1)
    lines = []
    (root / "val" / "images").mkdir(parents=True)
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("not an image\n")
        for i in range(4):
            _image(rng, c, side, side).save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        name = f"val_{c}.JPEG"
        _image(rng, c, side, side).save(root / "val" / "images" / name)
        lines.append(f"{name}\t{wnid}\t0\t0\t{side}\t{side}")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def inet(tmp_path_factory) -> Path:
    return imagenet_folder(tmp_path_factory.mktemp("stream") / "imagenet")


def _settings(tmp_path, dataset, data_dir=None, **kw):
    from conftest import tiny_settings

    values = dict(dataset=dataset, data_dir=str(data_dir) if data_dir else None,
                  image_size=SIDE, data_size=None, batch_size=4, epochs=2, levels=1,
                  particles=2, engine="sequential", model="resnet20", val_fraction=0.25)
    values.update(kw)
    return tiny_settings(tmp_path, **values)


def test_streamed_splits_equal_the_same_images_read_into_memory(inet):
    streamed = load_dataset("imagenet", data_dir=str(inet), val_fraction=0.25, split_seed=3,
                            file_options=FileOptions(image_size=SIDE))
    memory = load_dataset(f"imagefolder:{inet}", val_fraction=0.25, split_seed=3,
                          file_options=FileOptions(image_normalize="imagenet"))
    assert streamed.input_shape == memory.input_shape == (3, SIDE, SIDE)
    assert streamed.num_classes == 3
    for name in ("train", "val", "test"):
        s, m = getattr(streamed, name), getattr(memory, name)
        assert isinstance(s.x, FileImages) and isinstance(m.x, torch.Tensor)
        assert s.x.shape == m.x.shape and len(s) == len(m) > 0
        assert torch.equal(s.y, m.y), name
        assert torch.equal(s.x[:], m.x), name                        # bit for bit
        idx = torch.tensor([[len(s) - 1, 0], [1, 1]])
        assert torch.equal(s.x[idx], m.x[idx])                       # gathers keep their shape
        assert torch.equal(s.x[1], m.x[1])
        assert torch.equal(torch.cat(list(batches_of(s.x, 3))), m.x)
    # the labels follow the pixels (class c is grey level 40 + 80 c), normalised by ImageNet's
    mean, std = IMAGENET_STATS
    grey = streamed.train.x[:][:, 0].mean((1, 2)) * std[0] + mean[0]
    assert torch.equal((grey * 255 - 40).div(80).floor().long(), streamed.train.y)
    assert streamed.to("cpu").train.x.files == streamed.train.x.files   # nothing decoded


def test_imagenet_resizes_the_shorter_side_and_cuts_out_the_centre(tmp_path):
    root = tmp_path / "wide"
    for split in ("train", "val"):
        for c, wnid in enumerate(WNIDS[:2]):
            (root / split / wnid).mkdir(parents=True)
            a = np.zeros((8, 16, 3), np.uint8)
            a[:, 2:14] = 200                  # bright but for 2 columns at either end
            Image.fromarray(a).save(root / split / wnid / "a.png")
            Image.fromarray(a).save(root / split / wnid / "b.png")
    data = load_dataset("imagenet", data_dir=str(root), val_fraction=0.0, augment=False,
                        file_options=FileOptions(image_size=4, image_normalize="none"))
    x = data.test.x[:]
    assert x.shape == (4, 3, 4, 4)                            # 16x8 -> 8x4 -> centre 4x4
    assert torch.allclose(x, torch.full_like(x, 200 / 255))   # the dark ends are cut off


def test_tiny_imagenet_layout_and_annotations(tmp_path):
    root = tiny_folder(tmp_path / "tiny-imagenet-200")
    data = load_dataset("tiny-imagenet", data_dir=str(tmp_path), val_fraction=0.0,
                        file_options=FileOptions(image_size=SIDE))
    assert data.num_classes == 3 and data.input_shape == (3, SIDE, SIDE)
    assert len(data.train) == 12                               # *_boxes.txt is no image
    assert data.test.y.tolist() == [0, 1, 2]                   # from val_annotations.txt
    mean, std = IMAGENET_STATS
    grey = data.test.x[:][:, 0].mean((1, 2)) * std[0] + mean[0]
    assert grey.mul(255).sub(40).div(80).floor().long().tolist() == [0, 1, 2]
    assert data.augment is not None and data.augment.pad == 1
    default = load_dataset("tiny-imagenet", data_dir=str(root), val_fraction=0.0)
    assert default.input_shape == (3, 64, 64)                  # Tiny-ImageNet's own size
    assert default.test.x[:2].shape == (2, 3, 64, 64)


def _same_runs(a, b, levels=2):
    for level in range(levels):
        ref, got = a.solution(level), b.solution(level)
        for name, t in ref.items():                        # weights and BatchNorm statistics
            assert torch.equal(t, got[name]), (level, name)

    def metrics(r):                                        # every accuracy and loss
        lines = [line.split(",") for line in RunStore(r.run_dir).metrics_csv.read_text().split()]
        timed = lines[0].index("train_seconds")
        return [cells[:timed] + cells[timed + 1:] for cells in lines]
    assert metrics(a) == metrics(b)


def test_a_streamed_run_trains_as_the_same_images_in_memory(inet, tmp_path):
    memory = run(_settings(tmp_path, f"imagefolder:{inet}", image_size=None,
                           image_normalize="imagenet"), run_dir=tmp_path / "memory")
    streamed = run(_settings(tmp_path, "imagenet", inet), run_dir=tmp_path / "streamed")
    _same_runs(memory, streamed)


def test_loader_workers_change_no_result(inet, tmp_path):
    settings = [_settings(tmp_path, "imagenet", inet, model="mlp", particles=1, workers=w)
                for w in (0, 1)]
    assert settings[0].run_name() == settings[1].run_name()        # `workers`: unhashed
    _same_runs(*(run(s, run_dir=tmp_path / f"w{s.data.workers}") for s in settings))


def test_stacked_replicas_batches_and_a_late_start_equal_the_in_memory_ones(inet, monkeypatch):
    from swamp.config import TrainSettings
    from swamp.data import stream
    from swamp.train import Schedule, TrainPlan
    from swamp.train.fit import Batches

    made = []
    real = stream.DataLoader
    monkeypatch.setattr(stream, "DataLoader",
                        lambda *a, **kw: made.append(kw["num_workers"]) or real(*a, **kw))
    streamed = load_dataset("imagenet", data_dir=str(inet), val_fraction=0.0,
                            file_options=FileOptions(image_size=SIDE, workers=2))
    memory = load_dataset(f"imagefolder:{inet}", val_fraction=0.0,
                          file_options=FileOptions(image_normalize="imagenet"))
    settings = TrainSettings(epochs=3, batch_size=5, rewind_epochs=0)
    schedule = Schedule.build(settings, len(memory.train), swa=False)

    def batches(data):
        plan = TrainPlan(data.train, schedule, settings, 0, schedule.total, [3, 4], [5, 6],
                         [None, torch.arange(0, 18, 2)], ["a", "b"], augment=data.augment)
        return Batches(plan, torch.device("cpu"))
    a, b, late = batches(memory), batches(streamed), batches(streamed)
    for step in range(schedule.total):
        (xa, ya), (xb, yb) = a(step), b(step)
        assert xa.shape == (2, 5, 3, SIDE, SIDE)
        assert torch.equal(xa, xb) and torch.equal(ya, yb), step    # augmented, bit for bit
    assert made == [2]                                    # one loader, with the workers
    # a resumed loop starts reading at its step: the same batches as in memory (the labels;
    # the augmentation generators come from the checkpoint)
    ref = batches(memory)
    for step in range(4, schedule.total):
        assert torch.equal(late(step)[1], memory.train.y[ref._index(step)]), step


def test_a_streamed_particle_resumes_from_its_checkpoint_bit_for_bit(inet, tmp_path):
    from swamp.engines.base import checkpoint_file

    loop = LevelLoop(_settings(tmp_path, "imagenet", inet, particles=1, method="imp-swa",
                               epochs=3, swa_start=0.5, model="mlp", workers=1))
    task = level_task(loop, density=0.5)
    task.checkpoint_dir, task.checkpoint_every = tmp_path, 2
    whole = SequentialEngine().train_particles(
        LevelTask(task.level, task.start_state, task.mask, task.start_step, task.jobs), loop.ctx)

    def stop_at_3(index, done):
        if done == 3:
            stops._requested.append(15)                 # as if SIGTERM arrived during step 3
    with pytest.raises(stops.Interrupted):
        SequentialEngine().train_particles(task, loop.ctx, stop_at_3)
    stops._requested.clear()
    assert not multiprocessing.active_children()    # the stop stopped the loader's workers
    assert checkpoint_file(task, loop.ctx, task.jobs).load("cpu")[1]["step"] == 3
    resumed = SequentialEngine().train_particles(task, loop.ctx)
    assert_results_close(whole, resumed, atol=0)


def _one_line_error(argv, capsys, *needles):
    assert main(argv) not in (0, None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_bad_folder_is_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "runs"
    common = ["run", "--out", str(out), "--model", "mlp", "--epochs", "1", "--levels", "0"]
    _one_line_error([*common, "--dataset", "imagenet", "--data-dir", str(tmp_path / "none")],
                    capsys, "train/", "--data-dir")
    tiny = tiny_folder(tmp_path / "tiny", side=4)
    (tiny / "val" / "val_annotations.txt").unlink()
    _one_line_error([*common, "--dataset", "tiny-imagenet", "--data-dir", str(tiny)], capsys,
                    "val_annotations.txt")
    broken = imagenet_folder(tmp_path / "broken", per_class=1, val=1)
    first = sorted((broken / "train" / WNIDS[0]).iterdir())[0]
    first.write_bytes(b"not an image")
    _one_line_error([*common, "--dataset", "imagenet", "--data-dir", str(broken)], capsys,
                    str(first))
    _one_line_error([*common, "--dataset", "imagenet", "--data-dir", str(broken),
                     "--workers", "-1"], capsys, "--workers")
    assert not out.exists()


def test_an_unreadable_image_found_by_a_worker_is_one_line(tmp_path):
    root = imagenet_folder(tmp_path / "late", per_class=2, val=1)
    data = load_dataset("imagenet", data_dir=str(root), val_fraction=0.0,
                        file_options=FileOptions(image_size=SIDE, workers=1))
    bad = Path(data.test.x.files[-1])
    bad.write_bytes(b"truncated")
    for workers in (0, 1):
        data.test.x.workers = workers
        with pytest.raises(SwampError) as e:
            list(batches_of(data.test.x, 1))
        assert len(str(e.value).splitlines()) == 1 and str(bad) in str(e.value), workers
        assert not multiprocessing.active_children()    # its workers stopped at once


def test_a_daemonic_engine_process_decodes_itself(inet, monkeypatch):
    """The `distributed` engine's processes on one machine are daemonic and may start no
    DataLoader workers: they decode in-process, with the same batches."""
    import types

    from swamp.data import stream

    data = load_dataset("imagenet", data_dir=str(inet), val_fraction=0.0,
                        file_options=FileOptions(image_size=SIDE, workers=2))
    made = []
    real = stream.DataLoader
    monkeypatch.setattr(stream, "DataLoader",
                        lambda *a, **kw: made.append(kw["num_workers"]) or real(*a, **kw))
    monkeypatch.setattr(stream.multiprocessing, "current_process",
                        lambda: types.SimpleNamespace(daemon=True))
    assert torch.equal(torch.cat(list(batches_of(data.train.x, 5))), data.train.x[:])
    assert made == [0]
