"""Reading TorchScript archives' tensors without torch.jit.load (OpenAI's CLIP release is one)."""
import os
import pickle
import pickletools
import struct
import zipfile

import pytest
import torch
from torch import nn

from i2a.backbones import _load_state_dict, build_backbone
from i2a.torchscript_weights import RefusedGlobalError, TorchScriptFormatError, read_torchscript_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript itself is deprecated


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.no_bias = nn.Linear(4, 4, bias=False)  # an absent optional parameter
        self.register_buffer("steps", torch.tensor(7))  # int64 buffer
        self.register_buffer("scratch", torch.ones(2), persistent=False)  # jit's state_dict keeps these too
        self.register_buffer("strided", torch.arange(12.0)[1:10:3])  # a view: offset and stride
        self.register_buffer("phase", torch.tensor([1 + 2j, -0.5j], dtype=torch.complex64))
        self.plain = torch.full((2,), 3.0)  # a tensor attribute, neither parameter nor buffer
        self.scale = 1.5  # non-tensor attributes
        self.sizes = [1, 2, 3]

    def forward(self, x):
        y = self.no_bias(self.lin(x)) * self.scale + self.plain.sum() + self.scratch.sum()
        return y + self.strided.sum() + self.steps + self.phase.real.sum()


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.gain = nn.Parameter(torch.randn(4, 4).half())  # fp16, as OpenAI shipped CLIP
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.blocks[1].weight = self.blocks[0].weight  # tied
        self.label = "outer"

    def forward(self, x):
        y = self.inner(x)
        for block in self.blocks:
            y = block(y)
        return y @ self.gain.float()


def _save(kind: str, path) -> str:
    torch.manual_seed(0)
    module = Outer().eval()
    compiled = torch.jit.script(module) if kind == "script" else torch.jit.trace(module, torch.randn(2, 3))
    compiled.save(str(path))
    return str(path)


def _assert_same_state_dict(got: dict, expected: dict):
    assert list(got) == list(expected)  # same keys, same order
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape and got[key].stride() == value.stride(), key
        assert got[key].device == torch.device("cpu") and not got[key].requires_grad, key
        assert torch.equal(got[key], value), key


def _rewrite(src, dst, replace: dict[str, bytes]) -> None:
    """Copy a zip archive, replacing the entries whose names end with the given suffixes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = next((new for suffix, new in replace.items() if info.filename.endswith(suffix)), None)
            zout.writestr(info, zin.read(info) if data is None else data)


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_reader_gives_what_jit_load_state_dict_gives(tmp_path, kind):
    path = _save(kind, tmp_path / f"{kind}.pt")
    expected = torch.jit.load(path, map_location="cpu").state_dict()
    got = read_torchscript_state_dict(path)
    _assert_same_state_dict(got, expected)
    assert "inner.scratch" in got and "inner.plain" not in got and "inner.no_bias.bias" not in got
    assert got["gain"].dtype == torch.float16 and got["inner.phase"].dtype == torch.complex64
    # tied weights stay tied, as in the archive
    assert got["blocks.1.weight"].data_ptr() == got["blocks.0.weight"].data_ptr()


def _pickled_call(function, argument: str) -> bytes:
    """The opcodes of a pickle that calls function(argument) when loaded, without PROTO and STOP."""
    class Payload:
        def __reduce__(self):
            return function, (argument,)
    return pickle.dumps(Payload(), protocol=2)[2:-1]


def _unicode(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text)) + text.encode()


@pytest.mark.parametrize("function", [os.system, eval])
@pytest.mark.parametrize("nested", [False, True])
def test_an_archive_that_would_run_code_is_refused_before_running_it(tmp_path, function, nested):
    marker = tmp_path / "ran"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w').close()"
    call = _pickled_call(function, command)
    if nested:  # hidden in a scripted module's attributes, after the module record itself
        data = b"\x80\x02c__torch__\nOuter\n)\x81}(" + _unicode("gain") + call + b"ub."
    else:
        data = b"\x80\x02" + call + b"."
    evil = tmp_path / "evil.pt"
    _rewrite(_save("script", tmp_path / "good.pt"), evil, {"/data.pkl": data})
    with pytest.raises(RefusedGlobalError, match=rf"refers to \w+\.{function.__name__}\b"):
        read_torchscript_state_dict(evil)
    with pytest.raises(RefusedGlobalError):
        _load_state_dict(evil)
    assert not marker.exists()


def test_byte_order_and_saved_device_are_honoured(tmp_path):
    """Storages saved big-endian are swapped; storages saved from a GPU are read onto the CPU."""
    class Floats(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 5)

        def forward(self, x):
            return self.lin(x)

    src = tmp_path / "floats.pt"
    torch.jit.script(Floats()).save(str(src))
    expected = read_torchscript_state_dict(src)
    with zipfile.ZipFile(src) as zf:
        storages = {n: zf.read(n) for n in zf.namelist() if "/data/" in n}
        data_pkl = next(zf.read(n) for n in zf.namelist() if n.endswith("/data.pkl"))
    swapped = {name: b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) for name, raw in storages.items()}
    big = tmp_path / "big.pt"
    _rewrite(src, big, {"/byteorder": b"big", **swapped})
    _assert_same_state_dict(read_torchscript_state_dict(big), expected)

    assert _unicode("cpu") in data_pkl
    on_gpu = tmp_path / "gpu.pt"
    _rewrite(src, on_gpu, {"/data.pkl": data_pkl.replace(_unicode("cpu"), _unicode("cuda:0"))})
    _assert_same_state_dict(read_torchscript_state_dict(on_gpu), expected)


def test_damaged_archives_are_reported(tmp_path):
    src = _save("script", tmp_path / "good.pt")
    with zipfile.ZipFile(src) as zf:
        first_storage = next(n for n in zf.namelist() if n.endswith("/data/0"))
        truncated = zf.read(first_storage)[:-2]
        data_pkl = next(zf.read(n) for n in zf.namelist() if n.endswith("/data.pkl"))
    short = tmp_path / "short.pt"
    _rewrite(src, short, {first_storage: truncated})
    with pytest.raises(TorchScriptFormatError, match="storage '0' holds"):
        read_torchscript_state_dict(short)
    without_code = tmp_path / "no_code.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(without_code, "w") as zout:
        for info in zin.infolist():
            if "/code/" not in info.filename:
                zout.writestr(info, zin.read(info))
    with pytest.raises(TorchScriptFormatError, match="does not define as a module"):
        read_torchscript_state_dict(without_code)
    cyclic = tmp_path / "cyclic.pt"  # a module record that is its own submodule
    root_class = next(arg for op, arg, _ in pickletools.genops(data_pkl) if op.name == "GLOBAL").replace(" ", "\n")
    _rewrite(src, cyclic, {"/data.pkl": b"\x80\x02c" + root_class.encode() + b"\n)\x81q\x00}(" + _unicode("inner")
                           + b"h\x00ub."})
    with pytest.raises(TorchScriptFormatError, match="inner contains itself"):
        read_torchscript_state_dict(cyclic)
    not_torchscript = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, not_torchscript)
    with pytest.raises(TorchScriptFormatError, match="scripted module"):
        read_torchscript_state_dict(not_torchscript)


# ----------------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def openai_style_clip(tmp_path_factory):
    """open_clip's ViT-B/32 (random weights) saved the way OpenAI saved theirs: traced, fp16, with the
    input_resolution / context_length / vocab_size buffers, and the text mask as a plain attribute."""
    import open_clip

    torch.manual_seed(3)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    attn_mask = model.attn_mask
    del model.attn_mask, model.context_length, model.vocab_size
    model.attn_mask = attn_mask  # a plain attribute, as in OpenAI's model
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        model.register_buffer(name, torch.tensor(value))
    with torch.no_grad():
        traced = torch.jit.trace_module(model, {"encode_image": torch.randn(1, 3, 224, 224)}, check_trace=False)
    path = tmp_path_factory.mktemp("clip") / "ViT-B-32.pt"
    traced.half().save(str(path))
    return path, model


def test_a_traced_clip_archive_reads_like_jit_load(openai_style_clip):
    path, model = openai_style_clip
    got = read_torchscript_state_dict(path)
    _assert_same_state_dict(got, torch.jit.load(str(path), map_location="cpu").state_dict())
    assert list(got) == list(model.state_dict())
    assert {k: got[k].item() for k in ("input_resolution", "context_length", "vocab_size")} == {
        "input_resolution": 224, "context_length": 77, "vocab_size": 49408}
    assert got["visual.conv1.weight"].dtype == torch.float16


def test_the_clip_backbone_builds_from_a_torchscript_archive(openai_style_clip):
    path, model = openai_style_clip
    backbone = build_backbone("clip_vit_b32", str(path))  # the metadata buffers are dropped on the way
    expected = {k: v.half().float() for k, v in model.visual.state_dict().items()}
    _assert_same_state_dict(backbone.model.state_dict(), expected)
