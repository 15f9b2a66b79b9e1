"""Reading a configured dataset: the records of a split, loaders whose order depends only on (seed, epoch),
and a run's training and validation splits."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pose_toss.data.dataset import PoseDataset, collate_samples
from pose_toss.data.readers import DATASET_SKELETONS, dataset_records
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.skeletons import Skeleton, get_skeleton


def load_records(data_cfg, split: str, progress: bool = False, images: bool = True) -> tuple[list[dict], Skeleton]:
    """The records of one split (train / val / test) of the configured dataset, and its skeleton.

    Synthetic figures are rendered once into memory (a few MB per thousand at 128 px), or not at all
    with ``images=False`` (labels only); real images are read when a sample is drawn.
    """
    if data_cfg.dataset == "synthetic":

        ds = SyntheticPoseDataset.from_config(data_cfg.synthetic, split)
        make = ds.record if images else ds.annotation
        records = [make(i) for i in tqdm(range(len(ds)), desc=f"rendering {split}", disable=not progress or not images,
                                         leave=False)]
        return records, ds.skeleton
    records = dataset_records(data_cfg, split)
    if not records:
        raise ValueError(f"data.dataset {data_cfg.dataset!r}: the {split} split holds no people with joints")
    if data_cfg.dataset == "coco":  # the file's own keypoint set (checked against data.skeleton when set)
        return records, skeleton_for(records)
    skeleton = get_skeleton(DATASET_SKELETONS[data_cfg.dataset])
    if data_cfg.skeleton is not None and get_skeleton(data_cfg.skeleton).joint_names != skeleton.joint_names:
        raise ValueError(f"data.skeleton {data_cfg.skeleton!r} is not the joint set of data.dataset "
                         f"{data_cfg.dataset!r} ({skeleton.name}); leave it null or use a COCO-style file")
    return records, skeleton


def make_loader(dataset: PoseDataset, batch_size: int, runtime=None, *, shuffle: bool, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): ``loader.sampler.set_epoch(epoch)``.

    ``runtime`` (``engine.runtime.Runtime``, or anything with ``rank``, ``world_size`` and ``device``; None:
    one process on the CPU): each rank reads its shard; without shuffling the shards are padded to equal
    length (duplicates are harmless where indices are used, as in the embedding bank). Unreadable images
    are left out of their batch and named in its ``missing_images``."""
    rank, world = (0, 1) if runtime is None else (runtime.rank, runtime.world_size)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=runtime is not None and runtime.device.type == "cuda",
                      persistent_workers=False, collate_fn=collate_samples)


@dataclass
class RunData:
    """A run's two splits over one skeleton: records, datasets and loaders (training augmented and
    shuffled per epoch, validation plain and whole on every rank)."""
    skeleton: Skeleton
    train_records: list[dict]
    val_records: list[dict]
    train_set: PoseDataset
    val_set: PoseDataset
    train_loader: DataLoader
    val_loader: DataLoader


def run_data(data_cfg, seed: int, runtime, progress: bool = False) -> RunData:
    """The configured training and validation splits, ready to train on; a batch larger than a rank's
    share of the training set is refused (``drop_last`` would leave no step to take)."""
    train_records, skeleton = load_records(data_cfg, "train", progress)
    val_records, _ = load_records(data_cfg, "val", progress)
    train_set = PoseDataset.from_config(train_records, data_cfg, train=True, skeleton=skeleton, seed=seed)
    val_set = PoseDataset.from_config(val_records, data_cfg, train=False, skeleton=skeleton)
    train_loader = make_loader(train_set, data_cfg.batch_size, runtime, shuffle=True, seed=seed,
                               num_workers=data_cfg.num_workers, drop_last=True)
    if len(train_loader) == 0:
        raise ValueError(f"data.batch_size {data_cfg.batch_size} is larger than the {len(train_set)} training "
                         f"samples per rank; lower it")
    # Every rank scores the whole validation set: plateau schedules and best checkpoints agree.
    val_loader = make_loader(val_set, data_cfg.batch_size, replace(runtime, rank=0, world_size=1), shuffle=False,
                             num_workers=data_cfg.num_workers)
    return RunData(skeleton, train_records, val_records, train_set, val_set, train_loader, val_loader)


def skeleton_for(records: list[dict], default: str = "lsp14") -> Skeleton:
    return get_skeleton(records[0].get("skeleton", default)) if records else get_skeleton(default)
