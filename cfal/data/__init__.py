"""Dataset loading for cfal: IDX reader and Fashion-MNIST loader."""

from cfal.data.errors import DataError
from cfal.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from cfal.data.idx import read_idx

__all__ = ["DataError", "FASHION_MNIST_CLASSES", "load_fashion_mnist",
           "read_idx"]
