from __future__ import annotations

import pytest
import torch

from ferlab.data import SPLITS, BatchAugment, FER2013DataModule


@pytest.mark.parametrize("root_fixture", ["csv_root", "icml_root", "folder_root"])
@pytest.mark.parametrize("num_classes", [7, 6])
def test_batches_per_split(request, root_fixture, num_classes):
    dm = FER2013DataModule(request.getfixturevalue(root_fixture), num_classes=num_classes,
                           batch_size=8, eval_batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    sizes = {"train": 28, "val": 14, "test": 14}
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader()),
                          ("test", dm.test_dataloader())):
        faces, labels = zip(*loader)
        faces, labels = torch.cat(faces), torch.cat(labels)
        assert faces.dtype == torch.uint8 and faces.shape[1:] == (1, 48, 48)
        assert labels.dtype == torch.int64
        assert labels.min() >= 0 and labels.max() < num_classes
        # the training loader drops the ragged last batch
        assert len(labels) == (24 if split == "train" else sizes[split])
        counts = dm.class_counts(split)
        assert counts.sum() == sizes[split] and len(counts) == num_classes
    if num_classes == 6:
        assert dm.class_counts("train")[0] == 2 * 4  # angry + disgust
        assert dm.class_names[0] == "angry" and "disgust" not in dm.class_names


def test_train_on_train_and_val(csv_root):
    dm = FER2013DataModule(csv_root, batch_size=7, train_splits=["train", "val"])
    dm.setup("fit")
    assert len(dm.datasets["fit"]) == 42


def test_train_shuffles_and_val_does_not(csv_root):
    dm = FER2013DataModule(csv_root, batch_size=4, eval_batch_size=4)
    dm.setup()
    torch.manual_seed(0)
    first = torch.cat([y for _, y in dm.train_dataloader()])
    assert not torch.equal(first, torch.sort(first).values)
    val = torch.cat([y for _, y in dm.val_dataloader()])
    assert torch.equal(val, dm.datasets["val"].labels)


def test_preprocessing_and_augmentation_hooks(csv_root):
    class FakeTrainer:
        training = True

    dm = FER2013DataModule(csv_root, batch_size=8, augment=BatchAugment())
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    dm.trainer = FakeTrainer()
    x_train, y = dm.on_after_batch_transfer(batch, 0)
    FakeTrainer.training = False
    x_eval, _ = dm.on_after_batch_transfer(batch, 0)
    assert x_train.dtype == x_eval.dtype == torch.float32
    assert x_eval.shape == (len(y), 1, 48, 48)
    assert not torch.allclose(x_train, x_eval)  # augmentation only while training
    assert abs(float(x_eval.mean())) < 2


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 5}, "num_classes=5"),
    ({"train_splits": ["training"]}, "train_splits"),
    ({"batch_size": 0}, "Batch sizes"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FER2013DataModule("somewhere", **kwargs)


def test_dataloader_before_setup_is_explained(csv_root):
    with pytest.raises(RuntimeError, match="setup"):
        FER2013DataModule(csv_root).train_dataloader()


def test_splits_constant():
    assert SPLITS == ("train", "val", "test")


def test_ddp_shares_are_disjoint_and_cover_the_data():
    import torch
    from torch.utils.data import RandomSampler, SequentialSampler

    from ferlab.data.datamodule import Shard

    data = range(23)
    for epoch_draws in range(3):  # each epoch a new order, the same in every process
        shares = []
        for rank in range(3):
            stream = torch.Generator().manual_seed(42)
            sampler = RandomSampler(data, generator=stream)
            for _ in range(epoch_draws):
                list(sampler)
            shares.append(list(Shard(sampler, 3, rank, even=True)))
        assert [len(s) for s in shares] == [7, 7, 7]
        assert len(set().union(*shares)) == 21  # disjoint; two faces wait for the next epoch
    shares = [list(Shard(SequentialSampler(data), 3, rank, even=False)) for rank in range(3)]
    assert sorted(sum(shares, [])) == list(data) and [len(s) for s in shares] == [8, 8, 7]


def test_the_first_evaluation_batches_sample_every_class(folder_root, tmp_path):
    """An image-folder copy is read class by class; val and test are held in one fixed shuffled
    order, so trainer.limit_val_batches=N validates on a sample of the classes, the same one in
    every run."""
    orders = []
    for _ in range(2):
        dm = FER2013DataModule(folder_root, eval_batch_size=4, cache_dir=tmp_path)
        dm.setup()
        for split in ("val", "test"):
            first = next(iter(dm._loader(split, shuffle=False)))[1]
            assert len(set(first.tolist())) >= 3, (split, first)
        orders.append(dm.datasets["val"].labels)
        # the whole split is still there, class for class
        assert torch.bincount(dm.datasets["val"].labels).tolist() == [2] * 7
    assert torch.equal(*orders)
