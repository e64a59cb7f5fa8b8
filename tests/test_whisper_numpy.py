"""The NumPy Whisper encoder blocks behind the voice head's feature (mmva.encoders.whisper_numpy)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.media import speak


@pytest.fixture(scope="module")
def folder() -> str:
    from mmva.analyze.asr import default_asr_path

    return default_asr_path()


def test_all_blocks_equal_ctranslate2s_own_encoder(folder) -> None:
    """Through every block and the final layer norm, the NumPy encoder gives CTranslate2's states
    (run in float32, so only the arithmetic order differs)."""
    import ctranslate2

    from mmva.encoders.whisper_numpy import WhisperEncoderLayers, _layer_norm, read_ct2_variables
    from mmva.encoders.whisper_states import WhisperStates

    ct2 = WhisperStates(model=ctranslate2.models.Whisper(folder, device="cpu", compute_type="float32",
                                                         intra_threads=1))
    w = read_ct2_variables(os.path.join(folder, "model.bin"), "encoder/layer_norm")
    audio = speak("we are going to the station tomorrow morning")
    mel = ct2._mel(audio)
    full = WhisperEncoderLayers(folder, 4)
    outs = full(mel)
    assert len(outs) == 5 and all(o.shape == (len(outs[0]), 384) for o in outs)
    ours = _layer_norm(outs[-1], w["encoder/layer_norm/gamma"], w["encoder/layer_norm/beta"])
    ref = ct2.states(audio)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()
    # a shallower encoder stops early and gives the same blocks
    two = WhisperEncoderLayers(folder, 2)(mel)
    assert len(two) == 3 and np.array_equal(two[2], outs[2])


def test_block_states_pool_each_block_and_average(folder) -> None:
    from mmva.encoders.whisper_numpy import WhisperEncoderLayers
    from mmva.encoders.whisper_states import WhisperBlockStates, WhisperStates

    enc = WhisperBlockStates(None, (1, 2))
    audio = speak("the train leaves from platform four")
    v = enc.pooled(audio)
    assert v.shape == (enc.dim,) == (768,) and v.dtype == np.float32
    outs = WhisperEncoderLayers(folder, 2)(enc._mel(audio))
    expected = (WhisperStates.pool(outs[1]) + WhisperStates.pool(outs[2])) / 2
    assert np.allclose(v, expected, atol=1e-6)
    # very short and longer-than-30 s audio both give one vector; a batch is the clips one by one
    short = np.zeros(800, np.float32)
    long = np.tile(audio, int(np.ceil(31 * 16000 / len(audio))))[: 31 * 16000]
    batch = enc.pooled_batch([audio, short, long])
    assert batch.shape == (3, 768) and np.isfinite(batch).all()
    assert np.array_equal(batch[0], v)


def test_bad_model_files_and_blocks_are_named(tmp_path, folder) -> None:
    from mmva.encoders.whisper_numpy import WhisperEncoderLayers, read_ct2_variables

    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x06\x00\x00\x00\x0c\x00WhisperSpec")  # a header cut short
    with pytest.raises(ValueError, match="model.bin.*truncated"):
        read_ct2_variables(str(junk))
    junk.write_bytes(b"not a model at all, just text")
    with pytest.raises(ValueError, match="model.bin.*version"):
        read_ct2_variables(str(junk))
    with pytest.raises(ValueError, match="cannot read"):
        read_ct2_variables(str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="4 blocks; block 5"):
        WhisperEncoderLayers(folder, 5)


def _ct2_file(path, variables: list[tuple[str, int, np.ndarray]]) -> None:
    """A CTranslate2 binary (version 6) with the given (name, type code, array) variables."""
    import struct

    def name(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = struct.pack("<I", 6) + name("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for var, code, arr in variables:
        data = arr.tobytes()
        out += name(var) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        out += struct.pack("<B", code) + struct.pack("<I", len(data)) + data
    path.write_bytes(out + struct.pack("<I", 0))


def test_quantized_weights_are_scaled_back_and_unreadable_types_are_named(tmp_path) -> None:
    from mmva.encoders.whisper_numpy import read_ct2_variables

    w = np.array([[10, -20, 30], [40, 50, -60]], np.int8)
    scale = np.array([10.0, 20.0], np.float32)
    f = tmp_path / "model.bin"
    _ct2_file(f, [("encoder/x/weight", 1, w), ("encoder/x/weight_scale", 0, scale),
                  ("encoder/x/bias", 4, np.array([0.5, -1.5], np.float16)), ("decoder/y", 0, np.ones(2, np.float32))])
    got = read_ct2_variables(str(f), "encoder/")
    assert set(got) == {"encoder/x/weight", "encoder/x/bias"}
    assert np.allclose(got["encoder/x/weight"], w / scale[:, None]) and got["encoder/x/weight"].dtype == np.float32
    assert np.array_equal(got["encoder/x/bias"], [0.5, -1.5])
    _ct2_file(f, [("encoder/z", 5, np.zeros(4, np.uint16))])  # bfloat16
    with pytest.raises(ValueError, match="model.bin.*encoder/z.*type 5"):
        read_ct2_variables(str(f), "encoder/")
    _ct2_file(f, [("encoder/x/bias", 0, np.ones(64, np.float32))])
    f.write_bytes(f.read_bytes()[:-100])  # cut inside the data
    with pytest.raises(ValueError, match="model.bin.*truncated"):
        read_ct2_variables(str(f), "encoder/")


def test_gelu_is_the_exact_one() -> None:
    import math

    from mmva.encoders.whisper_numpy import gelu

    x = np.linspace(-9, 9, 2001).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(gelu(x) - exact).max() < 2e-6
