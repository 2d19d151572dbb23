"""Data: image files, datasets (folders, CSV, CIFAR, digits), splits and transforms."""
from .datasets import DataSplits, load_eval_set, load_splits
from .images import IMAGE_EXTENSIONS, BrokenImageError, DataError, is_image_file, list_images, load_image
from .transforms import eval_transform, train_transform

__all__ = ["IMAGE_EXTENSIONS", "BrokenImageError", "DataError", "DataSplits", "eval_transform", "is_image_file",
           "list_images", "load_eval_set", "load_image", "load_splits", "train_transform"]
