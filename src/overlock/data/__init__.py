"""Datasets and loaders: image-folder trees, Fashion-MNIST, class folders, corrupt-image skipping."""
from .class_folders import ClassFolderError, class_name, folder_name, match_class_folders
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FashionMNIST,
    FashionMNISTTransform,
    write_fashion_mnist_folders,
)
from .folder import ImageFolderDataset, collate_skipping_corrupt

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ClassFolderError",
    "FashionMNIST",
    "FashionMNISTTransform",
    "ImageFolderDataset",
    "class_name",
    "collate_skipping_corrupt",
    "folder_name",
    "match_class_folders",
    "write_fashion_mnist_folders",
]
