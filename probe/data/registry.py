"""The six labelled datasets of Baranchuk et al. (ICLR 2022): classes, palettes, sizes and checkpoints, and
what the authors publish for them, where (`Item`: a path under their storage root).

Class names and palette colours are listed in the order of the label values in the authors' released
label maps (yandex-research/ddpm-segmentation, src/data_util.py), spelling kept as released.

Also the semantic-correspondence benchmarks `probe correspond --dataset` fetches by name (PAIR_DATASETS: SPair-71k,
PF-PASCAL), each published by its own authors (`Item.url`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from probe.errors import ProbeError

RGB = tuple[int, int, int]

ADM_256_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)

# The authors' storage: every item below is published under it (PROBE_MIRROR replaces it, same relative paths).
STORAGE_ROOT = "https://storage.yandexcloud.net/yandex-research/ddpm-segmentation/"
# Each backbone's checkpoints: (folder under the storage root, file suffix); a file is named after its training set.
CHECKPOINT_FOLDERS = {"ddpm": ("models/ddpm_checkpoints", ".pt"), "mae": ("models/mae_checkpoints", ".pth"),
                      "swav": ("models/swav_checkpoints", ".pth"), "swav_w2": ("models/swav_w2_checkpoints", ".pth")}


@dataclass(frozen=True)
class Item:
    """One published file: `path` under the storage root (and under a mirror's); `what` names it for people; an
    archive is unpacked. `url`: where it is published when that is not under the storage root (a correspondence
    benchmark, on its authors' site)."""

    name: str
    path: str
    what: str
    url: str | None = None

    @property
    def archive(self) -> bool:
        return self.path.endswith(".tar.gz")


DATASETS_ITEM = Item("datasets", "datasets.tar.gz", "the paper's six labelled datasets (datasets.tar.gz)")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: label values index `class_names` and `palette`; `aliases[0]` is the paper's name."""

    name: str
    aliases: tuple[str, ...]
    class_names: tuple[str, ...]
    num_classes: int
    ignore_label: int
    train: int
    test: int
    checkpoint: str
    model_flags: str
    palette: tuple[RGB, ...]
    synthetic: bool  # the authors publish a DDPM-produced synthetic dataset for it
    test_up_to: int | None = None  # the authors' config's testing_number where it exceeds Table 1's test

    def __post_init__(self) -> None:
        if not len(self.class_names) == len(self.palette) == self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} names, {len(self.palette)} colours, "
                             f"{self.num_classes} classes")

    def split_number(self, split: str) -> int:
        """How many images of `split` ("train" or "test") the paper's protocol takes, the first by name (fewer when
        the split holds fewer): its configs' training_number and testing_number, which are Table 1's train and test
        but for Horse-21's test, where the config asks for up to 30 of the 20 images its split holds."""
        return self.train if split == "train" else self.test_up_to or self.test

    def checkpoint_item(self, backbone: str) -> Item:
        """The paper's checkpoint of `backbone` (ddpm, mae, swav, swav_w2) for this dataset."""
        folder, suffix = CHECKPOINT_FOLDERS[backbone]
        stem = self.checkpoint.removesuffix(".pt")
        file = f"{stem}{suffix}"
        return Item(f"{backbone}/{file}", f"{folder}/{file}", f"the paper's {backbone} checkpoint {file}")

    def synthetic_item(self) -> Item:
        """The authors' DDPM-produced synthetic dataset for this dataset (DatasetDDPM's training data)."""
        if not self.synthetic:
            raise ProbeError(f"the authors publish no synthetic dataset for {self.aliases[0]}; they exist for "
                             f"{', '.join(i.aliases[0] for i in DATASETS.values() if i.synthetic)}")
        return Item(f"synthetic/{self.name}", f"synthetic-datasets/ddpm/{self.name}.tar.gz",
                    f"the authors' synthetic {self.aliases[0]} dataset ({self.name}.tar.gz)")


BEDROOM_CLASSES = (
    "background", "bed", "bed***footboard", "bed***headboard", "bed***side rail", "carpet", "ceiling",
    "chandelier / ceiling fan blade", "curtain", "cushion", "floor", "table/nightstand/dresser",
    "table/nightstand/dresser***top", "picture / mirrow", "pillow", "lamp***column", "lamp***shade", "wall",
    "window", "curtain rod", "window***frame", "chair", "picture / mirror***frame", "plinth",
    "door / door frame", "pouf", "wardrobe", "plant", "table staff",
)
BEDROOM_PALETTE = (
    (255, 255, 255), (238, 229, 102), (255, 72, 69), (124, 99, 34), (193, 127, 15), (106, 177, 21),
    (248, 213, 43), (252, 155, 83), (220, 147, 77), (99, 83, 3), (116, 116, 138), (63, 182, 24),
    (200, 226, 37), (225, 184, 161), (233, 5, 219), (142, 172, 248), (153, 112, 146), (38, 112, 254),
    (229, 30, 141), (99, 205, 255), (74, 59, 83), (186, 9, 0), (107, 121, 0), (0, 194, 160),
    (255, 170, 146), (255, 144, 201), (185, 3, 170), (221, 239, 255), (0, 0, 53),
)

FFHQ_CLASSES = (
    "background", "head", "head***cheek", "head***chin", "head***ear", "head***ear***helix",
    "head***ear***lobule", "head***eye***bottom lid", "head***eye***eyelashes", "head***eye***iris",
    "head***eye***pupil", "head***eye***sclera", "head***eye***tear duct", "head***eye***top lid",
    "head***eyebrow", "head***forehead", "head***frown", "head***hair", "head***hair***sideburns",
    "head***jaw", "head***moustache", "head***mouth***inferior lip", "head***mouth***oral commissure",
    "head***mouth***superior lip", "head***mouth***teeth", "head***neck", "head***nose",
    "head***nose***ala of nose", "head***nose***bridge", "head***nose***nose tip", "head***nose***nostril",
    "head***philtrum", "head***temple", "head***wrinkles",
)
# The authors give FFHQ colours as fractions and truncate fraction * 255 to an integer; these are the results.
FFHQ_PALETTE = (
    (255, 255, 255), (112, 130, 107), (218, 243, 81), (61, 119, 252), (215, 237, 192), (95, 201, 83),
    (4, 126, 96), (190, 3, 144), (41, 61, 186), (5, 111, 104), (149, 226, 156), (203, 232, 247),
    (173, 159, 218), (254, 119, 98), (136, 210, 69), (44, 92, 212), (135, 170, 125), (54, 88, 120),
    (174, 31, 37), (98, 118, 25), (58, 10, 77), (146, 139, 250), (33, 245, 19), (72, 47, 66),
    (248, 240, 169), (99, 113, 164), (221, 100, 24), (155, 247, 6), (93, 170, 79), (164, 186, 243),
    (157, 27, 230), (86, 126, 185), (42, 235, 167), (240, 171, 157),
)

CAT_CLASSES = (
    "background", "back", "belly", "chest", "leg", "paw", "head", "ear", "eye", "mouth", "tongue", "nose",
    "tail", "whiskers", "neck",
)
CAT_PALETTE = (
    (255, 255, 255), (190, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (102, 102, 156),
    (152, 251, 152), (119, 11, 32), (244, 35, 232), (220, 20, 60), (52, 83, 84), (194, 87, 125),
    (143, 176, 255), (31, 102, 211), (104, 131, 101),
)

HORSE_CLASSES = (
    "background", "person", "back", "barrel", "bridle", "chest", "ear", "eye", "forelock", "head", "hoof",
    "leg", "mane", "muzzle", "neck", "nostril", "tail", "thigh", "saddle", "shoulder", "leg protection",
)
HORSE_PALETTE = (
    (255, 255, 255), (255, 74, 70), (0, 137, 65), (0, 111, 166), (163, 0, 89), (255, 219, 229),
    (122, 73, 0), (0, 0, 166), (99, 255, 172), (183, 151, 98), (0, 77, 67), (143, 176, 255),
    (241, 38, 110), (27, 210, 105), (128, 150, 147), (228, 230, 158), (160, 136, 106), (79, 198, 1),
    (59, 93, 255), (115, 214, 209), (255, 47, 128),
)

CELEBA_CLASSES = (
    "background", "cloth", "ear_r", "eye_g", "hair", "hat", "l_brow", "l_ear", "l_eye", "l_lip", "mouth",
    "neck", "neck_l", "nose", "r_brow", "r_ear", "r_eye", "skin", "u_lip",
)
CELEBA_PALETTE = (
    (255, 255, 255), (238, 229, 102), (250, 150, 50), (124, 99, 34), (193, 127, 15), (225, 96, 18),
    (220, 147, 77), (99, 83, 3), (116, 116, 138), (200, 226, 37), (225, 184, 161), (142, 172, 248),
    (153, 112, 146), (38, 112, 254), (229, 30, 141), (52, 83, 84), (194, 87, 125), (248, 213, 42),
    (31, 102, 211),
)

ADE_BEDROOM_CLASSES = (
    "wall", "bed", "floor", "table", "lamp", "ceiling", "painting", "windowpane", "pillow", "curtain",
    "cushion", "door", "chair", "cabinet", "chest", "mirror", "rug", "armchair", "book", "sconce", "plant",
    "wardrobe", "clock", "light", "flower", "vase", "fan", "box", "shelf", "television",
)
ADE_BEDROOM_PALETTE = (
    (240, 156, 206), (69, 88, 93), (240, 49, 184), (27, 107, 126), (50, 82, 241), (54, 250, 147),
    (156, 213, 3), (176, 108, 79), (251, 150, 149), (66, 51, 34), (210, 97, 53), (30, 53, 102),
    (232, 164, 118), (204, 150, 17), (101, 86, 178), (249, 20, 213), (54, 35, 82), (157, 68, 216),
    (58, 161, 73), (174, 67, 67), (193, 181, 78), (169, 60, 178), (220, 204, 166), (4, 127, 85),
    (245, 106, 216), (222, 172, 168), (84, 148, 105), (137, 220, 89), (68, 252, 126), (29, 193, 187),
)


def _dataset(name: str, aliases: tuple[str, ...], class_names: tuple[str, ...], palette: tuple[RGB, ...],
             ignore_label: int, train: int, test: int, checkpoint: str, synthetic: bool,
             test_up_to: int | None = None) -> DatasetInfo:
    return DatasetInfo(
        name=name, aliases=aliases, class_names=class_names, num_classes=len(class_names),
        ignore_label=ignore_label, train=train, test=test, checkpoint=checkpoint, model_flags=ADM_256_FLAGS,
        palette=palette, synthetic=synthetic, test_up_to=test_up_to,
    )


# train and test: Table 1's split sizes, the numbers of images the authors' configs
# (experiments/<name>/ddpm.json: training_number, testing_number) take from each split.
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    # number_class 29: label 0 (background) is the ignore label, leaving the 28 classes of the name.
    _dataset("bedroom_28", ("Bedroom-28", "bedroom"), BEDROOM_CLASSES, BEDROOM_PALETTE, 0, 40, 20,
             "lsun_bedroom.pt", True),
    _dataset("ffhq_34", ("FFHQ-34", "ffhq"), FFHQ_CLASSES, FFHQ_PALETTE, 255, 20, 20,
             "ffhq.pt", True),
    _dataset("cat_15", ("Cat-15", "cat"), CAT_CLASSES, CAT_PALETTE, 255, 30, 20,
             "lsun_cat.pt", True),
    # testing_number 30 in the authors' config; the split holds Table 1's 20
    _dataset("horse_21", ("Horse-21", "horse"), HORSE_CLASSES, HORSE_PALETTE, 255, 30, 20,
             "lsun_horse.pt", True, test_up_to=30),
    _dataset("celeba_19", ("CelebA-19", "celeba"), CELEBA_CLASSES, CELEBA_PALETTE, 255, 20, 500,
             "ffhq.pt", False),
    _dataset("ade_bedroom_30", ("ADE-Bedroom-30", "ade_bedroom", "ade"), ADE_BEDROOM_CLASSES,
             ADE_BEDROOM_PALETTE, 255, 50, 650, "lsun_bedroom.pt", False),
)}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


_BY_KEY = {_normalise(key): info for info in DATASETS.values() for key in (info.name, *info.aliases)}


def lookup(name: str) -> DatasetInfo:
    """The dataset called `name`, ignoring case, '_', '-' and spaces (horse21, Horse-21, horse_21)."""
    info = _BY_KEY.get(_normalise(name))
    if info is None and is_pairs_dataset(name):
        raise ProbeError(f"{name!r} is a correspondence benchmark, for probe correspond; here use one of "
                         f"{', '.join(DATASETS)}")
    if info is None:
        raise ProbeError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return info


@dataclass(frozen=True)
class PairsDatasetInfo:
    """A semantic-correspondence benchmark: `items` its published files, the archive first; `layout` "spair" (the
    archive holds SPair-71k's own layout: JPEGImages/<category>/, PairAnnotation/test/*.json) or "proposal_flow"
    (Proposal Flow's Annotations/<class>/*.mat and JPEGImages/, with a pair list; converted to SPair's on first use).
    `aliases[0]` is its usual name."""

    name: str
    aliases: tuple[str, ...]
    items: tuple[Item, ...]
    layout: str


# The 20 PASCAL VOC classes in the order of the class column (1-based) of Proposal Flow's pair lists.
PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# Neither benchmark publishes a hash or a size: as for the authors' items, the first complete download's SHA-256 is
# recorded and later copies must match it. A mirror (PROBE_MIRROR) holds them at their paths.
PAIR_DATASETS: dict[str, PairsDatasetInfo] = {info.name: info for info in (
    # the URL of DIFT's README (Tsingularity/dift), used by DIFT's eval_spair.py
    PairsDatasetInfo("spair71k", ("SPair-71k", "spair"), (
        Item("spair71k", "correspondence/SPair-71k.tar.gz", "SPair-71k (SPair-71k.tar.gz)",
             "https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"),
    ), "spair"),
    # the Proposal Flow archive and the test pair list of WeakAlign / NC-Net (the list DenseMatching downloads)
    PairsDatasetInfo("pfpascal", ("PF-PASCAL", "pf_pascal"), (
        Item("pfpascal", "correspondence/PF-dataset-PASCAL.zip", "PF-PASCAL (PF-dataset-PASCAL.zip)",
             "https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset-PASCAL.zip"),
        Item("pfpascal/test_pairs", "correspondence/test_pairs_pf_pascal.csv",
             "PF-PASCAL's test pairs (test_pairs_pf_pascal.csv)",
             "https://www.di.ens.fr/willow/research/cnngeometric/other_resources/test_pairs_pf_pascal.csv"),
    ), "proposal_flow"),
)}
_PAIRS_BY_KEY = {_normalise(key): info for info in PAIR_DATASETS.values() for key in (info.name, *info.aliases)}


def is_pairs_dataset(name: str) -> bool:
    """Whether `name` names a correspondence benchmark (spair71k, SPair-71k, pfpascal, PF-PASCAL, ...)."""
    return _normalise(name) in _PAIRS_BY_KEY


def lookup_pairs(name: str) -> PairsDatasetInfo:
    """The correspondence benchmark called `name`, ignoring case, '_', '-' and spaces (spair71k, SPair-71k)."""
    info = _PAIRS_BY_KEY.get(_normalise(name))
    if info is None:
        raise ProbeError(f"unknown correspondence dataset {name!r}; known: {', '.join(PAIR_DATASETS)} (or --data "
                         "DIR, a folder in SPair-71k's layout)")
    return info


def pairs_items() -> list[Item]:
    """Every file the correspondence benchmarks publish."""
    return [item for info in PAIR_DATASETS.values() for item in info.items]


def publishes_checkpoint(backbone: str) -> bool:
    """Whether the authors publish checkpoints of `backbone` (ddpm, mae, swav, swav_w2) for their datasets."""
    return backbone in CHECKPOINT_FOLDERS


def published_items() -> list[Item]:
    """Every item the authors publish for the six datasets: the dataset archive, each backbone's checkpoints, the
    synthetic datasets."""
    checkpoints = {info.checkpoint_item(backbone) for info in DATASETS.values() for backbone in CHECKPOINT_FOLDERS}
    synthetic = [info.synthetic_item() for info in DATASETS.values() if info.synthetic]
    return [DATASETS_ITEM, *sorted(checkpoints, key=lambda item: item.name), *synthetic]
