"""PatchDataset / QuadrupletDataset: split selection, item contents, seeded determinism,
lazy per-worker opening, several files."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lift.data import PatchDataset, PatchWriter, QuadrupletDataset, SchemaError
from test_data_schema import write_small


@pytest.fixture()
def small(tmp_path):
    return write_small(tmp_path / "small.h5", n_tracks=9, views=3, negatives=5)


def test_patch_dataset_split_selection_and_items(small):
    train = PatchDataset(small, split="train")
    assert len(train) == 3 * 3 + 5  # tracks 0, 3, 6 (split 0) + the negatives
    assert len(PatchDataset(small, split=["val", "test"])) == 18
    assert len(PatchDataset(small, split=None)) == 32
    assert len(PatchDataset(small, split="train", kinds=[0])) == 9
    item = train[3]
    assert item["patch"].shape == (1, 16, 16) and item["patch"].dtype == torch.float32
    assert int(item["track"]) == 1  # dense index of track id 3 among tracks of the split
    assert torch.allclose(item["patch"], torch.full((1, 16, 16), 3 / 255.0))
    assert item["keypoint"].shape == (4,) and float(item["keypoint"][2]) == 2.0
    assert int(item["index"]) == 9 and int(item["split"]) == 0 and int(item["kind"]) == 0
    raw = PatchDataset(small, split="train", as_float=False)[-1]
    assert raw["patch"].dtype == torch.uint8 and int(raw["patch"].max()) == 200
    assert int(raw["track"]) == -1
    with pytest.raises(IndexError):
        train[len(train)]
    with pytest.raises(ValueError, match="unknown split"):
        PatchDataset(small, split="training")


def test_quadruplets_are_valid_and_deterministic(small):
    ds = QuadrupletDataset(small, split=None, seed=3)
    assert len(ds) == ds.num_tracks == 9
    for i in range(len(ds)):
        it = ds[i]
        t = it["track"]
        assert it["patches"].shape == (4, 1, 16, 16)
        assert t[0] == t[1] and t[2] != t[0] and t[2] >= 0 and t[3] == -1
        assert it["index"][0] != it["index"][1]
        values = (it["patches"][:, 0, 0, 0] * 255).round().long()
        # patch pixels encode the file track id: P1/P2 the same, P3 another, P4 = 200
        assert values[0] == values[1] and values[2] != values[0] and values[3] == 200
    again = QuadrupletDataset(small, split=None, seed=3)
    rows = [ds.rows(i) for i in range(9)]
    assert all(np.array_equal(again.rows(i), rows[i]) for i in reversed(range(9)))
    ds.set_epoch(1)
    assert any(not np.array_equal(ds.rows(i), rows[i]) for i in range(9))
    other_seed = QuadrupletDataset(small, split=None, seed=4)
    assert any(not np.array_equal(other_seed.rows(i), rows[i]) for i in range(9))
    longer = QuadrupletDataset(small, split=None, seed=3, length=20)
    assert len(longer) == 20 and longer[19]["track"][0] >= 0


def test_splits_never_share_tracks(small):
    train = QuadrupletDataset(small, split="train", seed=0, length=30)
    val = PatchDataset(small, split="val", kinds=[0])
    train_ids = {int(train.store.track_id[r]) for i in range(30) for r in train.rows(i)[:3]}
    val_ids = set(val.store.track_id.tolist())
    assert train_ids <= {0, 3, 6} and val_ids == {1, 4, 7}


def test_dataloader_workers_give_the_same_batches(small):
    ds = QuadrupletDataset(small, split=None, seed=1)
    ds[0]  # opens the file in this process; the handle must not travel to workers
    pickle.loads(pickle.dumps(ds))
    a = next(iter(DataLoader(ds, batch_size=9, num_workers=0)))
    b = next(iter(DataLoader(ds, batch_size=9, num_workers=2)))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_several_files_keep_tracks_apart(tmp_path):
    f1 = write_small(tmp_path / "a.h5", n_tracks=4, splits=[0] * 4)
    f2 = write_small(tmp_path / "b.h5", n_tracks=4, splits=[0] * 4)
    ds = QuadrupletDataset([f1, f2], split="train", seed=0)
    assert ds.num_tracks == 8
    assert set(ds.store.track[ds.store.track >= 0].tolist()) == set(range(8))
    files = {int(ds[i]["file"][0]) for i in range(8)}
    assert files == {0, 1}
    mem = PatchDataset([f1, f2], split="train", in_memory=True)
    disk = PatchDataset([f1, f2], split="train")
    assert all(torch.equal(mem[i]["patch"], disk[i]["patch"]) for i in range(0, len(disk), 5))
    g = write_small(tmp_path / "c.h5", patch_size=8)
    with pytest.raises(SchemaError, match="mix patch geometries"):
        PatchDataset([f1, g])


def test_quadruplet_errors(tmp_path, small):
    with pytest.raises(ValueError, match="no non-keypoint patch"):
        QuadrupletDataset(small, split="val")
    assert len(QuadrupletDataset(small, split="val", with_negative=False)[0]["track"]) == 3
    with PatchWriter(tmp_path / "one.h5", "x", "y", {}, patch_size=8) as w:
        w.add_image("i", (9, 9))
        w.add_patches(np.zeros((3, 8, 8), np.uint8), [0, -1, -1], [0] * 3, np.ones((3, 4)),
                      [0] * 3, [0, 2, 2])
    with pytest.raises(ValueError, match="at least 2 views"):
        QuadrupletDataset(tmp_path / "one.h5")
