"""The names a configuration may use, without the code behind them.

Validating a config or a study needs only these names, so a mistyped flag fails before torch,
Ray or MLflow is imported (a fraction of a second, not several). The registries that hold the
code (``dm_tune.datasets.DATASETS``, ``methods.METHODS``, ``models.MODELS``, ``noise.NOISE_MODELS``)
have exactly these keys, in this order; a test keeps them in step.
"""

from __future__ import annotations

# name -> needs a data root on disk
DATASET_ROOTS: dict[str, bool] = {
    "digits": False,
    "mnist1d": False,
    "cifar10": True,
    "cifar100": True,
    "clothing1m": True,
    "imagefolder": True,
    "imdb": True,
    "features": True,
    "reid-synth": False,
    "mars": True,
    "mars-features": True,
}
DATASET_NAMES = tuple(DATASET_ROOTS)

# Datasets whose task is not classification: retrieval trains an identity classifier and ranks
# a gallery by its embeddings (dm_tune.data_reid, dm_tune.retrieval).
TASKS: dict[str, str] = {"reid-synth": "retrieval", "mars": "retrieval", "mars-features": "retrieval"}

METHOD_NAMES = ("dm", "cce", "cce-dn", "gce", "gce-dn", "mae", "mae-dn", "mse", "mse-dn", "sl")

MODEL_NAMES = ("mlp", "imdb-mlp", "cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet50",
               "reid-resnet18", "reid-resnet50", "text")

NOISE_NAMES = ("none", "symmetric", "pair", "cifar100-superclass", "file")


def rate_limit(name: str, num_classes: int) -> float | None:
    """The rate at which a noise model's labels stop telling the classes apart (exclusive).

    Symmetric noise leaves the true label the most common one of its class while
    1 - r > r / (C - 1), i.e. r < (C - 1) / C (at the limit the labels are uniform); pair and
    superclass noise while 1 - r > r, i.e. r < 0.5 (at 0.5 a class's examples carry its label and
    its partner's equally, above it mostly the partner's: no method can learn the true classes).
    A label file (real noise, any structure) is held to random labels' rate, (C - 1) / C, whatever
    its structure: ``noise.from_file`` refuses a file that differs from the data that often.
    """
    if name in ("symmetric", "file"):
        return (num_classes - 1) / num_classes
    if name in ("pair", "cifar100-superclass"):
        return 0.5
    return None


# cifar100-superclass's rate is that of each paired subclass, as dm-tune train takes it: 2 of each
# superclass's 5 subclasses are paired (dm_tune.noise.cifar100_superclass), so a rate r makes about
# r x 2/5 of all labels wrong (0.4: 16%). The other synthetic types' rate is that fraction itself.
SUPERCLASS_PAIRED_SHARE = 2 / 5


def wrong_label_fraction(noise: str, rate: float) -> float:
    """About what fraction of all labels noise ``noise`` at (dm-tune train's) ``rate`` makes wrong."""
    return rate * SUPERCLASS_PAIRED_SHARE if noise == "cifar100-superclass" else rate


def rate_of_fraction(noise: str, fraction: float) -> float:
    """The rate of noise ``noise`` (as dm-tune train takes it) that makes ``fraction`` of the labels
    wrong: ``wrong_label_fraction``'s inverse."""
    return fraction / SUPERCLASS_PAIRED_SHARE if noise == "cifar100-superclass" else fraction


# Datasets whose number of classes is fixed (the others': their files'); cifar100's classes alone
# come in groups (cifar100-superclass noise).
FIXED_CLASSES: dict[str, int] = {"digits": 10, "mnist1d": 10, "cifar10": 10, "cifar100": 100, "clothing1m": 14,
                                 "imdb": 2}
CLASS_WEIGHTING_NAMES = ("none", "inverse", "sqrt-inverse", "effective-number")  # dm_tune.class_weighting's SCHEMES

IMBALANCE_KINDS = ("none", "longtail", "step")
IMBALANCE_RATIO_MAX = 1e4  # largest / smallest class size a run takes
PRETRAINABLE = ("resnet18", "resnet50", "reid-resnet18", "reid-resnet50")  # the models `pretrained` loads into
IMAGE_DATASETS = ("cifar10", "cifar100", "clothing1m", "imagefolder")  # the ones `augment` crops and flips
DOWNLOADABLE = ("cifar10", "cifar100")  # the ones `download` fetches
# The ones read from disk a batch at a time, through a DataLoader (what `num_workers` sets); the
# others are held in memory once loaded, where a batch is a slice of a tensor.
STREAMED = ("clothing1m", "imagefolder", "mars")


def task_of(dataset: str) -> str:
    return TASKS.get(dataset, "classification")
