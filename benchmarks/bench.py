# SPDX-License-Identifier: BSL-1.0
"""What the Python sides of the Fashion-MNIST comparison share, as bench.hpp
for the C++ side: the IDX reader and the BLAS core a process loaded. numpy
and the standard library only, so that benchmarks/numpy_mlp.py need not
import torch (benchmarks/pytorch_mlp.py imports this module too).
"""

import ctypes
import gzip
import os
import struct

import numpy as np

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """An IDX file (plain or .gz) as a numpy array of unsigned bytes."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory, base):
    """The plain file when it exists (as parallax's loader), else the .gz."""
    plain = os.path.join(directory, base)
    return plain if os.path.exists(plain) else plain + ".gz"


def load_split(directory, split):
    """Images as float32 [n, 784] in [0, 1] and labels as int64 [n] ("train" or "test")."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(directory, f"{prefix}-labels-idx1-ubyte"))
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255), labels.astype(np.int64)


def openblas():
    """(OpenBLAS's handle, its path) as loaded in this process, or (None, the BLAS libraries seen).
    numpy and torch both reach it through libblas.so.3."""
    with open("/proc/self/maps") as maps:
        libs = sorted({line.split()[-1] for line in maps if "blas" in line and line.split()[-1].startswith("/")})
    for lib in libs:
        try:
            handle = ctypes.CDLL(lib)
            handle.openblas_get_corename
        except (OSError, AttributeError):
            continue
        return handle, lib
    return None, ", ".join(libs)


def blas_core():
    """(OpenBLAS's core, its library) as loaded in this process."""
    handle, lib = openblas()
    if handle is None:
        return "unknown (not OpenBLAS)", lib
    handle.openblas_get_corename.restype = ctypes.c_char_p
    return handle.openblas_get_corename().decode(), lib


def blas_threads():
    """OpenBLAS's thread count in this process (openblas_get_num_threads), or None."""
    handle, _ = openblas()
    return None if handle is None else int(handle.openblas_get_num_threads())
