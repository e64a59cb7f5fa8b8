"""The first blocks of a CTranslate2 Whisper encoder, in NumPy, for the voice head's middle-layer states.

CTranslate2 returns only the encoder's last layer, which Whisper's training tunes towards the words;
the middle layers keep more of *how* something is said (issue 13: Whisper tiny's state after block 2
of 4 scores 49 % leave-one-corpus-out UAR against 43 % for the last layer, docs/voice.md). This module
reads the encoder's weights from the same ``model.bin`` the speech recognition loads and runs the
convolutional front end and the first ``layers`` transformer blocks in float32 NumPy: no torch, no
second model file. Through all four blocks and the final layer norm the states equal CTranslate2's own
float32 encoder to 1e-3 of their range (tests/test_whisper_numpy.py; a PyTorch port agreed to 4e-6).

Hand-written because nothing else does it: CTranslate2's Python API exposes neither intermediate
layers nor the weights, and its ``model.bin`` has no reader outside CTranslate2's C++ (the format is
a flat list of named arrays, read here with ``numpy.frombuffer`` on a memory map).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import threading
from functools import lru_cache
from typing import Any

import numpy as np

# CTranslate2's DataType enum (include/ctranslate2/types.h)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2_variables(path: str, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``, as float32
    arrays (int8/int16 weights divided by their ``weight_scale``; bfloat16 is refused with a message).

    Raises ValueError naming the file when it is not a CTranslate2 model of a version read here."""
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the Whisper model ({exc})") from None
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        value = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value[0]

    def name() -> str:
        nonlocal pos
        n = take("<H")
        text = buf[pos: pos + n - 1].decode("utf-8")
        pos += n
        return text

    try:
        version = take("<I")
        if not 5 <= version <= 6:
            raise ValueError(f"{path}: CTranslate2 binary version {version} (5 or 6 is read)")
        name()  # spec name
        if version >= 5:
            take("<I")  # spec revision
        raw: dict[str, tuple[np.ndarray, int]] = {}
        for _ in range(take("<I")):
            var = name()
            dims = [take("<I") for _ in range(take("<B"))]
            dtype = take("<B")
            nbytes = take("<I")
            if pos + nbytes > len(buf):
                raise ValueError(f"{path}: truncated in the data of {var!r}")
            if var.startswith(prefix):
                if dtype not in _DTYPES:
                    raise ValueError(f"{path}: {var!r} is stored as CTranslate2 type {dtype} "
                                     "(float32, float16, int8/16/32 are read; convert the model to float16)")
                arr = np.frombuffer(buf, _DTYPES[dtype], nbytes // np.dtype(_DTYPES[dtype]).itemsize, pos)
                raw[var] = (arr.reshape(dims), dtype)
            pos += nbytes
    except struct.error:
        raise ValueError(f"{path}: truncated or not a CTranslate2 model") from None
    out: dict[str, np.ndarray] = {}
    for var, (arr, dtype) in raw.items():
        if var.endswith("weight_scale"):
            continue
        if dtype in (1, 2) and var + "_scale" in raw:  # int8/int16 rows scaled by weight_scale
            scale = raw[var + "_scale"][0].astype(np.float32)
            out[var] = arr.astype(np.float32) / scale.reshape(-1, *([1] * (arr.ndim - 1)))
        else:
            out[var] = np.array(arr, dtype=np.float32)  # a copy: the map closes with the last view
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    # erfc's Chebyshev fit from Numerical Recipes ("erfcc", fractional error < 1.2e-7): NumPy has
    # no erf, and scipy.special costs ~0.6 s to import on the torch-free analyze path.
    t = 1.0 / (1.0 + 0.5 * np.abs(x))
    y = 1.0 - t * np.exp(-x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    return np.where(x >= 0, y, -y)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as Whisper uses."""
    return (0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))).astype(np.float32)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + 1e-5) * gamma + beta).astype(np.float32)


def _conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """(c_in, n) -> (n_out, c_out), kernel 3, padding 1, as Whisper's two front-end convolutions."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    n_out = (x.shape[1] - 1) // stride + 1
    cols = np.stack([xp[:, k: k + stride * (n_out - 1) + 1: stride] for k in range(3)], axis=-1)  # (c_in, n_out, 3)
    cols = cols.transpose(1, 0, 2).reshape(n_out, -1)
    return cols @ weight.reshape(weight.shape[0], -1).T + bias


class WhisperEncoderLayers:
    """Whisper's encoder up to (and including) block ``layers`` of a CTranslate2 model folder.

    ``encoder(mel)`` takes one log-mel ``(n_mels, frames)`` (frames <= 3000) and returns the
    residual stream after the front end (positions added) and after each block up to ``layers``,
    each ``(ceil(frames / 2), d)``. Utterances are encoded one by one, unpadded, so a state never depends on
    what else was in a batch.
    """

    def __init__(self, folder: str, layers: int) -> None:
        w = read_ct2_variables(os.path.join(folder, "model.bin"), "encoder/")
        available = sum(1 for k in w if k.endswith("/self_attention/linear_1/weight"))
        if not 0 <= layers <= available:
            raise ValueError(f"{folder}: the encoder has {available} blocks; block {layers} was asked for")
        self.layers = layers
        self.n_mels = int(w["encoder/conv1/weight"].shape[1])
        self.dim = int(w["encoder/conv1/weight"].shape[0])
        heads = int(w.get("encoder/num_heads", np.array(self.dim // 64)))
        self.heads = heads
        block = re.compile(r"encoder/layer_(\d+)/")
        self._w = {k: v for k, v in w.items() if not (m := block.match(k)) or int(m.group(1)) < layers}

    def __call__(self, mel: np.ndarray) -> list[np.ndarray]:
        """The states after the front end and after each block: ``layers + 1`` arrays ``(frames, d)``."""
        # One BLAS thread: these small products gain nothing from a second one, and beside the
        # analyze pipeline's other threads OpenBLAS's spinning workers made them 35 % slower. The
        # limit is process-wide, so calls take turns (else overlapping limits could restore wrongly).
        with _BLAS_LOCK, _blas().limit(limits=1, user_api="blas"):
            return self._run(mel)

    def _run(self, mel: np.ndarray) -> list[np.ndarray]:
        w = self._w
        x = gelu(_conv1d(np.asarray(mel, np.float32), w["encoder/conv1/weight"], w["encoder/conv1/bias"], 1).T)
        x = gelu(_conv1d(x, w["encoder/conv2/weight"], w["encoder/conv2/bias"], 2))
        x = (x + w["encoder/position_encodings/encodings"][: len(x)]).astype(np.float32)
        n, d = x.shape
        hd = d // self.heads
        out = [x]
        for i in range(self.layers):
            p = f"encoder/layer_{i}/"
            h = _layer_norm(x, w[p + "self_attention/layer_norm/gamma"], w[p + "self_attention/layer_norm/beta"])
            qkv = h @ w[p + "self_attention/linear_0/weight"].T + w[p + "self_attention/linear_0/bias"]
            q, k, v = (qkv[:, j * d:(j + 1) * d].reshape(n, self.heads, hd).transpose(1, 0, 2) for j in range(3))
            att = (q @ k.transpose(0, 2, 1)) * np.float32(hd ** -0.5)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            a = (att @ v).transpose(1, 0, 2).reshape(n, d)
            x = x + a @ w[p + "self_attention/linear_1/weight"].T + w[p + "self_attention/linear_1/bias"]
            h = _layer_norm(x, w[p + "ffn/layer_norm/gamma"], w[p + "ffn/layer_norm/beta"])
            h = gelu(h @ w[p + "ffn/linear_0/weight"].T + w[p + "ffn/linear_0/bias"])
            x = (x + h @ w[p + "ffn/linear_1/weight"].T + w[p + "ffn/linear_1/bias"]).astype(np.float32)
            out.append(x)
        return out


_BLAS_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _blas() -> Any:
    from threadpoolctl import ThreadpoolController  # scikit-learn's dependency, ~20 ms to import

    return ThreadpoolController()


@lru_cache(maxsize=4)
def encoder_layers(folder: str, layers: int) -> WhisperEncoderLayers:
    """One :class:`WhisperEncoderLayers` per (model folder, depth) per process."""
    return WhisperEncoderLayers(folder, layers)
