"""The LightningDataModules (FER2013, FER+): in-memory uint8 faces, batched tensor preprocessing."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from ferlab.data.cache import default_cache_dir, load_faces, load_mapped
from ferlab.data.ferplus import (
    VOTE_FILES,
    VOTE_NAMES,
    VoteTable,
    load_votes,
    locate_ferplus,
    majority_labels,
    vote_targets,
)
from ferlab.data.folders import (
    FolderTable,
    assign_splits,
    check_split_rule,
    locate_folder_set,
    subject_groups,
)
from ferlab.data.labels import SPLITS, class_names, remap_labels
from ferlab.data.sources import FaceTable, locate
from ferlab.data.teacher import teacher_probabilities
from ferlab.data.transforms import BatchAugment, preprocess

log = logging.getLogger(__name__)


class FaceBatches(Dataset):
    """Faces held as one uint8 tensor, indexed a whole batch at a time (no per-sample collate).
    Labels are class indices (N,) int64 or per-face distributions (N, C) float32 (FER+'s votes)."""

    def __init__(self, faces: torch.Tensor, labels: torch.Tensor) -> None:
        self.faces, self.labels = faces, labels  # (N, 1, H, W) uint8, (N,) or (N, C)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.faces[index], self.labels[index]

    def reordered(self, order: torch.Tensor) -> FaceBatches:
        return FaceBatches(self.faces[order], self.labels[order])

    @staticmethod
    def join(parts: Sequence[FaceBatches]) -> FaceBatches:
        return FaceBatches(torch.cat([d.faces for d in parts]),
                           torch.cat([d.labels for d in parts]))


class MappedFaces(Dataset):
    """Rows of a memory-mapped (N, 48, 48) uint8 face array, read a batch at a time: a set larger
    than memory trains, the pages the operating system keeps being its only copy."""

    def __init__(self, faces: np.ndarray, rows: np.ndarray, labels: torch.Tensor) -> None:
        self.faces, self.rows, self.labels = faces, np.asarray(rows, dtype=np.int64), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        faces = np.ascontiguousarray(self.faces[self.rows[index]])  # (B, 48, 48), a copy
        return torch.from_numpy(faces).unsqueeze(1), self.labels[index]

    def reordered(self, order: torch.Tensor) -> MappedFaces:
        return MappedFaces(self.faces, self.rows[order.numpy()], self.labels[order])

    @staticmethod
    def join(parts: Sequence[MappedFaces]) -> MappedFaces:
        return MappedFaces(parts[0].faces, np.concatenate([d.rows for d in parts]),
                           torch.cat([d.labels for d in parts]))


class Shard(Sampler[int]):
    """Every ``world``-th index of another sampler's order, from ``rank`` on: one process's share
    under DDP. Every process must draw the same order, so that the shares are disjoint. ``even``
    first drops the last few indices so that every process gets as many (DDP steps in lockstep);
    otherwise shares differ by at most one and together cover all."""

    def __init__(self, sampler: Sampler[int], world: int, rank: int, even: bool) -> None:
        self.sampler, self.world, self.rank, self.even = sampler, world, rank, even

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        if self.even:
            order = order[:len(order) - len(order) % self.world]
        return iter(order[self.rank::self.world])

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.world if self.even else len(range(self.rank, n, self.world))


class FER2013DataModule(L.LightningDataModule):
    """FER2013's official splits (train/val/test) in the seven- or six-class view."""

    title = "FER2013"  # how the log names the data
    views: tuple[int, ...] = (7, 6)  # the class views the data can give

    def __init__(
        self,
        root: str | os.PathLike = "data/fer2013",
        num_classes: int = 7,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        train_splits: Sequence[str] = ("train",),
        augment: BatchAugment | None = None,
        cache_dir: str | os.PathLike | None = None,
        num_workers: int = 0,
        balanced_sampling: bool = False,
        teacher: str | Sequence[str] | None = None,
        teacher_weight: float = 0.7,
    ) -> None:
        super().__init__()
        self.class_names = class_names(num_classes)  # validates num_classes
        if teacher and type(self) is not FER2013DataModule:
            raise ValueError(f"data.teacher distils on FER2013's faces and labels; for "
                             f"{self.title} use module.teacher=<model> (the teacher then runs "
                             "on every training batch).")
        if not 0.0 < teacher_weight <= 1.0:
            raise ValueError(f"data.teacher_weight must be in (0, 1]; got {teacher_weight}.")
        if num_classes not in self.views:
            raise ValueError(f"{type(self).__name__} trains the class views with "
                             f"{' or '.join(map(str, self.views))} classes; got num_classes="
                             f"{num_classes} (contempt, the eighth, is FER+'s: data=ferplus, or "
                             "data=mixture with FER2013 among the sets).")
        unknown = set(train_splits) - set(SPLITS)
        if unknown or not train_splits:
            raise ValueError(f"train_splits must be a non-empty subset of {SPLITS}; got "
                             f"{list(train_splits)}.")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"Batch sizes must be positive; got {batch_size}, {eval_batch_size}.")
        self.root = Path(root)
        self.num_classes = num_classes
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_splits = tuple(train_splits)
        self.augment = augment
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        # draw training faces with probability 1 / (their class's count): every class equally
        # often on average, so the network does not learn the training mix as a prior
        self.balanced_sampling = balanced_sampling
        # distillation with the teacher's answers computed once: each training target is
        # teacher_weight of its probabilities and the rest the face's label
        self.teacher = list(teacher) if teacher and not isinstance(teacher, str) else teacher
        self.teacher_weight = teacher_weight
        self.datasets: dict[str, FaceBatches] = {}

    def check_source(self) -> None:
        """Fail fast, saying where to get the data, when the data root holds nothing readable."""
        locate(self.root)

    def prepare_data(self) -> None:
        self._load()  # decodes once and writes the cache

    def _load(self) -> FaceTable:
        return load_faces(self.root, self.cache_dir)

    def _split_dataset(self, table: FaceTable, split: str, training: bool) -> FaceBatches:
        """One split's faces and targets: for training (the fit set) or for evaluation."""
        part = table.select(split)
        faces = torch.from_numpy(np.ascontiguousarray(part.faces)).unsqueeze(1)
        return FaceBatches(faces, torch.from_numpy(remap_labels(part.labels, self.num_classes)))

    def _taught(self, fit: FaceBatches) -> FaceBatches:
        """The fit set with each target ``teacher_weight`` of the teacher's probabilities and the
        rest the face's label (the teacher answers once for all the training splits)."""
        taught = teacher_probabilities(self.teacher, fit.faces[:, 0].numpy(), self.num_classes,
                                       self.cache_dir or default_cache_dir())
        labels = (self.teacher_weight * torch.from_numpy(taught)
                  + (1 - self.teacher_weight) * F.one_hot(fit.labels, self.num_classes).float())
        return FaceBatches(fit.faces, labels)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        table = self._load()
        for split in SPLITS:
            self.datasets[split] = self._split_dataset(table, split, training=False)
        for split in ("val", "test"):
            # in one fixed shuffled order (seed 0, the same for every run): trainer.limit_val_
            # batches=N then validates on a sample of every class, not on the first classes of
            # a class-sorted image-folder copy (val/acc 0.005 with happy recall 1.0)
            data = self.datasets[split]
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
            self.datasets[split] = data.reordered(order)
        train = [self._split_dataset(table, s, training=True) for s in self.train_splits]
        self.datasets["fit"] = type(train[0]).join(train)
        if self.teacher:
            self.datasets["fit"] = self._taught(self.datasets["fit"])
        log.info("%s from %s: %s", self.title, self.root,
                 ", ".join(f"{s}={len(self.datasets[s])}" for s in ("fit", *SPLITS)))

    def class_counts(self, split: str) -> np.ndarray:
        """Faces per class (in output order) in a split; with distributions as targets, each
        face's share of each class."""
        labels = self.datasets[split].labels.numpy()
        if labels.ndim == 2:
            return labels.sum(axis=0, dtype=np.float64)
        return np.bincount(labels, minlength=self.num_classes)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("Call setup() before asking for a dataloader.")
        data = self.datasets[split]
        # under DDP each process takes its share itself (trainer use_distributed_sampler=false:
        # Lightning's own DistributedSampler would undo the batching)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        if shuffle:
            # one process: the global stream, which seed= and resume= set; several: a stream of
            # their own from the seed, so that all draw the same order whatever else they draw
            stream = torch.Generator().manual_seed(torch.initial_seed()) if world > 1 else None
            weights = self.draw_weights(data)
            if weights is not None:
                draws = WeightedRandomSampler(weights, len(data), replacement=True,
                                              generator=stream)
            else:
                draws = RandomSampler(data, generator=stream)
            order = Shard(draws, world, rank, even=True)
            # drop the ragged last batch (batch norm dislikes a batch of one) unless it is all
            sampler = BatchSampler(order, self.batch_size, drop_last=len(order) > self.batch_size)
            generator = None  # the global stream, which seed= and resume= set
        else:
            order = Shard(SequentialSampler(data), world, rank, even=False)
            sampler = BatchSampler(order, self.eval_batch_size, drop_last=False)
            # each pass draws a seed from its loader's generator: a private one keeps evaluation
            # off the global stream, so validating or not leaves training's draws unchanged
            generator = torch.Generator().manual_seed(0)
        return DataLoader(data, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, generator=generator)

    def draw_weights(self, data: Dataset) -> torch.Tensor | None:
        """Each training face's chance of being drawn (None: every face once an epoch)."""
        if not self.balanced_sampling:
            return None
        major = data.labels.argmax(dim=1) if data.labels.ndim == 2 else data.labels
        return (1.0 / torch.bincount(major, minlength=self.num_classes).double())[major]

    def train_dataloader(self) -> DataLoader:
        return self._loader("fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # faces alone: the model summary's example
            return preprocess(batch)
        faces, labels = batch
        x = preprocess(faces)
        if self.trainer is not None and self.trainer.training:
            if self.augment is not None:
                x = self.augment(x)
            labels = self.training_targets(labels)
        return x, labels

    def training_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """A training batch's targets as the loss takes them (FER+'s label drawing: one class
        per face from its distribution)."""
        return labels


class FERPlusDataModule(FER2013DataModule):
    """FER+'s faces and votes (Barsoum et al. 2016) in eight classes (with contempt) or FER2013's
    seven. ``labels`` chooses how the training faces' votes become targets: ``majority`` (a class
    index), ``crossentropy`` (the distribution of the winning emotions), ``probability`` (a class
    drawn from that distribution for every batch) or ``multilabel`` (the emotions with at least
    30% of the votes; the loss takes the one the network rates highest). Validation and test
    faces always carry their majority label, which accuracy counts against."""

    views = (8, 7)

    def __init__(
        self,
        root: str | os.PathLike = "data/ferplus",
        num_classes: int = 8,
        labels: str = "majority",
        votes: str = "label.csv",
        **kwargs,
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, **kwargs)
        vote_targets(np.zeros((0, len(VOTE_NAMES))), labels, num_classes)  # validates both
        if votes not in VOTE_FILES:
            raise ValueError(f"data.votes={votes!r} is not one of {list(VOTE_FILES)}.")
        self.labels, self.votes = labels, votes
        self.title = f"FER+ ({labels} targets, votes from {votes})"

    @property
    def label_set(self) -> bool:
        """Whether training targets are sets of accepted labels (multi-label learning)."""
        return self.labels == "multilabel"

    def check_source(self) -> None:
        locate_ferplus(self.root, self.votes)

    def _load(self) -> VoteTable:
        return load_votes(self.root, self.votes, self.cache_dir)

    def _split_dataset(self, table: VoteTable, split: str, training: bool) -> FaceBatches:
        part = table.select(split)
        if training and self.labels != "majority":
            targets, keep = vote_targets(part.votes, self.labels, self.num_classes)
            labels = torch.from_numpy(targets)
        else:
            indices, keep = majority_labels(part.votes, self.num_classes)
            labels = torch.from_numpy(indices)
        faces = torch.from_numpy(np.ascontiguousarray(part.faces[keep])).unsqueeze(1)
        if len(part) and not training:
            log.info("FER+ %s: %d of %d faces have a majority label (the rest, ties and "
                     "unknown / not-a-face, are left out)", split, int(keep.sum()), len(part))
        return FaceBatches(faces, labels)

    def training_targets(self, labels: torch.Tensor) -> torch.Tensor:
        if self.labels == "probability":  # a new draw every time a face is seen
            return torch.multinomial(labels, 1).squeeze(1)
        return labels


class FolderDataModule(FER2013DataModule):
    """Any labelled folder set (``root/<split>/<class>/*`` or ``root/<class>/*``: RAF-DB, AffectNet
    or ExpW exports, CK+, JAFFE, KDEF): images of any size, grey or colour, decoded once into a
    memory-mapped uint8 cache (faces detected and cropped then, with ``detect``), folder names
    mapped onto ferlab's classes (``class_map`` beside the built-in aliases). Without split
    folders, whole subjects (``group``: a regular expression whose first group finds the subject
    in a file name) are drawn into test and val, or into ``folds`` folds of which ``fold`` tests:
    no subject is in two splits."""

    views = (8, 7, 6)

    def __init__(
        self,
        root: str | os.PathLike = "data/faces",
        num_classes: int = 7,
        class_map: Mapping[str, str] | None = None,
        detect: str | None = None,
        group: str | None = None,
        folds: int = 0,
        fold: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, **kwargs)
        self.class_map = dict(class_map or {})
        self.detect, self.group = detect, group
        self.folds, self.fold, self.split_seed = folds, fold, split_seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        check_split_rule(val_fraction, test_fraction, folds, fold)
        subject_groups(np.array([]), group)  # checks the pattern
        self.title = f"Folder set {Path(root).name}"
        self._splits: np.ndarray | None = None

    def check_source(self) -> None:
        locate_folder_set(self.root, self.class_map, self.detect)

    def _load(self) -> FolderTable:
        source = locate_folder_set(self.root, self.class_map, self.detect)
        table = load_mapped(source, FolderTable, "folders", self.title, self.cache_dir)
        if self._splits is None:
            groups = subject_groups(table.sources, self.group)
            self._splits = assign_splits(groups, table.splits, self.val_fraction,
                                         self.test_fraction, self.folds, self.fold,
                                         self.split_seed)
            if not (self._splits == SPLITS.index("val")).any():
                raise ValueError(f"{self.root}: no images fall in the validation split; raise "
                                 "data.val_fraction (or add a val/ folder).")
        return table

    def _split_dataset(self, table: FolderTable, split: str, training: bool) -> MappedFaces:
        ids = remap_labels(table.labels, self.num_classes)
        rows = np.flatnonzero((self._splits == SPLITS.index(split)) & table.found & (ids >= 0))
        return MappedFaces(table.faces, rows, torch.from_numpy(ids[rows]))


class MixedFaces(Dataset):
    """Several data sets' faces as one, a batch at a time: each face is read from its own set
    (in memory or memory-mapped), labels are held together (distributions when any set's are)."""

    def __init__(self, parts: Sequence[Dataset], labels: torch.Tensor, part_of: np.ndarray,
                 local: np.ndarray) -> None:
        self.parts, self.labels = list(parts), labels
        self.part_of, self.local = part_of, local  # (M,) which set, (M,) index in that set

    @staticmethod
    def of(parts: Sequence[Dataset], num_classes: int) -> MixedFaces:
        soft = any(p.labels.ndim == 2 for p in parts)
        labels = [F.one_hot(p.labels, num_classes).float() if soft and p.labels.ndim == 1
                  else p.labels for p in parts]
        return MixedFaces(parts, torch.cat(labels),
                          np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]),
                          np.concatenate([np.arange(len(p)) for p in parts]))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(index)
        parts, local = self.part_of[index], self.local[index]
        faces = None
        for part in np.unique(parts):
            chosen = parts == part
            got, _ = self.parts[part][local[chosen].tolist()]
            if faces is None:
                faces = torch.empty((len(index), *got.shape[1:]), dtype=got.dtype)
            faces[torch.from_numpy(chosen)] = got
        return faces, self.labels[torch.from_numpy(index)]

    def reordered(self, order: torch.Tensor) -> MixedFaces:
        order = order.numpy()
        return MixedFaces(self.parts, self.labels[order], self.part_of[order], self.local[order])

    def sizes(self) -> np.ndarray:
        return np.bincount(self.part_of, minlength=len(self.parts))


class MixtureDataModule(FER2013DataModule):
    """Several data sets trained at once, in one class view (``num_classes``, applied to every
    set): each set is a data module of its own (FER2013, FER+, a folder set) with its own root
    and class mapping. Training draws from the sets in proportion to ``weights`` (by set name;
    without weights, in proportion to their sizes); validation pools the sets' val faces; the
    test after training gives figures per set (``test/<set>/acc``) and pooled."""

    views = (8, 7, 6)

    def __init__(
        self,
        sets: Mapping[str, FER2013DataModule],
        weights: Mapping[str, float] | None = None,
        num_classes: int = 7,
        **kwargs,
    ) -> None:
        kwargs.pop("root", None)
        super().__init__(root=".", num_classes=num_classes, **kwargs)
        if len(sets) < 1:
            raise ValueError("data=mixture needs its sets: add each with +data@data.sets.<name>="
                             "<data config>, e.g. +data@data.sets.fer2013=fer2013 "
                             "+data@data.sets.ck=folder data.sets.ck.root=data/ckplus.")
        weights = dict(weights or {})
        unknown = set(weights) - set(sets)
        if unknown or any(not (isinstance(w, (int, float)) and w > 0) for w in weights.values()):
            raise ValueError(f"data.weights={weights}: give a positive weight per set name "
                             f"({', '.join(sets)}); unknown: {sorted(unknown)}.")
        if weights and set(weights) != set(sets):
            raise ValueError(f"data.weights names {sorted(weights)} but the sets are "
                             f"{sorted(sets)}: weigh every set or none.")
        for name, member in sets.items():
            if getattr(member, "labels", None) in ("probability", "multilabel"):
                raise ValueError(f"data.sets.{name}.labels={member.labels}: in a mixture a set "
                                 "gives class indices or distributions (majority or "
                                 "crossentropy).")
            member.num_classes, member.class_names = num_classes, self.class_names
        self.sets, self.weights = dict(sets), weights
        self.title = f"Mixture of {', '.join(self.sets)}"
        self.test_set: str | None = None  # the set test_dataloader gives (None: all pooled)

    def check_source(self) -> None:
        for member in self.sets.values():
            member.check_source()

    def prepare_data(self) -> None:
        for member in self.sets.values():
            member.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for member in self.sets.values():
            member.trainer = self.trainer
            member.setup(stage)
        members = list(self.sets.values())
        for split in (*SPLITS, "fit"):
            self.datasets[split] = MixedFaces.of([m.datasets[split] for m in members],
                                                 self.num_classes)
        order = torch.randperm(len(self.datasets["val"]),
                               generator=torch.Generator().manual_seed(0))
        self.datasets["val"] = self.datasets["val"].reordered(order)  # sets interleaved
        log.info("%s: %s", self.title, "; ".join(
            f"{name} fit={len(m.datasets['fit'])} val={len(m.datasets['val'])} "
            f"test={len(m.datasets['test'])}" for name, m in self.sets.items()))

    @property
    def test_sets(self) -> list[str]:
        return list(self.sets)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            return self._loader("test", shuffle=False)
        return self.sets[self.test_set]._loader("test", shuffle=False)

    def draw_weights(self, data: Dataset) -> torch.Tensor | None:
        if not self.weights:
            return super().draw_weights(data)
        sizes = data.sizes()
        share = np.array([self.weights[name] for name in self.sets], dtype=np.float64)
        return torch.from_numpy(share[data.part_of] / np.maximum(sizes, 1)[data.part_of])
