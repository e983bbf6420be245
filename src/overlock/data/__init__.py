"""Datasets and loaders: image-folder trees, Fashion-MNIST, robustness sets, corrupt-image skipping."""
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FashionMNIST, FashionMNISTTransform
from .folder import ImageFolderDataset, collate_skipping_corrupt

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FashionMNIST",
    "FashionMNISTTransform",
    "ImageFolderDataset",
    "collate_skipping_corrupt",
]
