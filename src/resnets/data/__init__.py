"""Data: image files (`images.py`, found by `walk.py`), datasets and splits (`datasets.py`), transforms, the
unreadable-file policy (`bad_files.py`), the `--in-memory` and `--decode-on-device` pipelines, `check-data`."""
from ..errors import BrokenImageError, DataError
from .datasets import DATASETS, DataSplits, load_eval_set, load_splits
from .images import IMAGE_EXTENSIONS, is_image_file, load_image
from .transforms import eval_transform, train_transform
from .walk import list_images

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "BrokenImageError", "DataError", "DataSplits", "eval_transform",
           "is_image_file", "list_images", "load_eval_set", "load_image", "load_splits", "train_transform"]
