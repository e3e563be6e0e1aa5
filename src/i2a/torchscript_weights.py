"""Read a TorchScript archive's parameters and buffers without running TorchScript.

OpenAI ships CLIP as a TorchScript archive. `torch.jit.load` deserialises its classes and compiles the code inside,
and `torch.load(weights_only=True)` refuses such archives, so this module reads the tensors itself:

- `data.pkl` is unpickled with an allowlist: tensor rebuilding, typed storages, the plain containers TorchScript's
  pickler writes. Every scripted class (`__torch__.*`) becomes an inert record of its attributes; any other global
  is refused before anything is called.
- Storages come straight from the zip entries `<prefix>/data/<key>`, always onto the CPU.
- Which attributes are parameters and buffers is not in the pickle (it holds every attribute, including plain
  tensor attributes that `state_dict()` leaves out). It is in the archive's printed class definitions, as
  `__parameters__ = [...]` and `__buffers__ = [...]` lines; those lines are read as text, never run.

The result has the keys, order, dtypes and values of `torch.jit.load(path).state_dict()`, which (unlike eager
modules) also holds non-persistent buffers.
"""
from __future__ import annotations

import ast
import collections
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch


class TorchScriptFormatError(ValueError):
    """The file is not a TorchScript archive this reader understands."""


class RefusedGlobalError(TorchScriptFormatError, pickle.UnpicklingError):
    """data.pkl names a global outside the allowlist: nothing from it is imported or called."""


# ----------------------------------------------------------------------------------------------- the allowlist
# Storage class names that TorchScript's pickler writes (`torch.<ScalarType>Storage`).
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
    "ComplexHalfStorage": torch.complex32, "UInt16Storage": torch.uint16, "UInt32Storage": torch.uint32,
    "UInt64Storage": torch.uint64, "Float8_e5m2Storage": torch.float8_e5m2,
    "Float8_e4m3fnStorage": torch.float8_e4m3fn,
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stands in for `torch.<X>Storage` inside a persistent id: only its dtype matters."""

    dtype: torch.dtype


class _Allowed:
    """An allowlisted callable as the pickle stack sees it: callable (REDUCE), but not a type (so no NEWOBJ)
    and not modifiable (BUILD on it is refused), whatever the archive asks."""

    __slots__ = ("name", "function")

    def __init__(self, name: str, function: Callable[..., Any]):
        self.name = name
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __setstate__(self, state: Any) -> None:
        raise RefusedGlobalError(f"data.pkl tries to modify {self.name}")


def _rebuild_tensor(storage: Any, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2` on a flat storage tensor; like `state_dict()`, no autograd flag."""
    if not isinstance(storage, torch.Tensor):
        raise TorchScriptFormatError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
    # as_strided checks that the view stays inside the storage
    return storage.as_strided(tuple(size), tuple(stride), storage_offset)


def _passthrough(value: Any, *type_tag: Any) -> Any:
    """TorchScript's typed-list and type-tag wrappers (torch.jit._pickle): the plain value is all we need."""
    return value


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,  # a tensor's (empty) backward hooks
    ("torch.jit._pickle", "build_intlist"): _passthrough,
    ("torch.jit._pickle", "build_doublelist"): _passthrough,
    ("torch.jit._pickle", "build_boollist"): _passthrough,
    ("torch.jit._pickle", "build_tensorlist"): _passthrough,
    ("torch.jit._pickle", "restore_type_tag"): _passthrough,
    ("torch", "device"): torch.device,  # device-typed attributes
    ("builtins", "complex"): complex,  # complex-valued attributes
}


class ScriptObject:
    """An inert record of one scripted object: its TorchScript class name and its pickled state."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"ScriptObject({self.qualified_name})"


# ----------------------------------------------------------------------------------------------- unpickling
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl: allowlisted globals, scripted classes as records, storages from the zip."""

    def __init__(self, file: Any, archive: _Archive):
        super().__init__(file)
        self._archive = archive
        self._record_classes: dict[str, type[ScriptObject]] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return self._record_class(f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED_GLOBALS:
            return _Allowed(f"{module}.{name}", _ALLOWED_GLOBALS[(module, name)])
        raise RefusedGlobalError(f"{self._archive.path}: data.pkl refers to {module}.{name}, which a weights-only "
                                 "reader does not load (only tensors, plain containers and scripted-module "
                                 "records are allowed)")

    def _record_class(self, qualified_name: str) -> type[ScriptObject]:
        """One record class per TorchScript class, so NEWOBJ keeps the name; made here, never imported."""
        if qualified_name not in self._record_classes:
            self._record_classes[qualified_name] = type("ScriptObject", (ScriptObject,),
                                                        {"qualified_name": qualified_name})
        return self._record_classes[qualified_name]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        """('storage', <X>Storage, key, location, numel) -> the storage as a flat CPU tensor, shared per key."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise TorchScriptFormatError(f"{self._archive.path}: unexpected persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise TorchScriptFormatError(f"{self._archive.path}: malformed storage reference {pid!r:.200}")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in self._storages:
            self._storages[key] = self._archive.read_storage(key, storage_type.dtype, numel)
        return self._storages[key]


# ----------------------------------------------------------------------------------------------- the archive
@dataclass(frozen=True)
class _ModuleLayout:
    parameters: tuple[str, ...]
    buffers: tuple[str, ...]


_CLASS = re.compile(r"class\s+(\w+)\s*(\(\s*Module\s*\))?\s*:?")  # group 2: a module class
_SLOT_LIST_START = re.compile(r"\s+(__parameters__|__buffers__)\s*=")
_SLOT_LIST = re.compile(r"\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")


class _Archive:
    """The zip entries of one TorchScript archive, found under its single top-level folder."""

    def __init__(self, path: str | Path, zf: zipfile.ZipFile):
        self.path = path
        self.zf = zf
        top = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(top) != 1:
            raise TorchScriptFormatError(f"{path}: not a TorchScript archive (expected one <name>/data.pkl)")
        self.prefix = top[0][: -len("data.pkl")]
        self.names = set(zf.namelist())
        self.byteorder = self._byteorder()

    def _byteorder(self) -> str:
        name = self.prefix + "byteorder"
        if name not in self.names:
            return "little"  # archives from before the record existed were written little-endian
        order = self.zf.read(name).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise TorchScriptFormatError(f"{self.path}: unknown byte order {order!r}")
        return order

    def read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = f"{self.prefix}data/{key}"
        if name not in self.names:
            raise TorchScriptFormatError(f"{self.path}: storage {key!r} is missing from the archive")
        itemsize = dtype.itemsize
        nbytes = numel * itemsize
        size = self.zf.getinfo(name).file_size
        if size != nbytes:
            raise TorchScriptFormatError(f"{self.path}: storage {key!r} holds {size} bytes, expected "
                                         f"{numel} x {itemsize}")
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        raw = torch.frombuffer(bytearray(self.zf.read(name)), dtype=torch.uint8)
        if self.byteorder != sys.byteorder and itemsize > 1:
            unit = itemsize // 2 if dtype.is_complex else itemsize  # complex: swap real and imaginary parts apart
            raw = raw.view(-1, unit).flip(1).reshape(-1)
        return raw.view(dtype)

    def class_layouts(self) -> dict[str, _ModuleLayout | None]:
        """Qualified class name -> a module class's parameter and buffer names (None for other classes),
        from the printed class definitions.

        `code/__torch__/a/b.py` holds the classes of namespace `__torch__.a.b`; only the lines at class level
        are looked at, with the two lists parsed as literals.
        """
        code = self.prefix + "code/"
        layouts: dict[str, _ModuleLayout | None] = {}
        for name in sorted(self.names):
            if name.startswith(code) and name.endswith(".py"):
                namespace = name[len(code): -len(".py")].replace("/", ".")
                try:
                    classes = _classes(self.zf.read(name).decode("utf-8"))
                except (TorchScriptFormatError, UnicodeDecodeError) as err:
                    raise TorchScriptFormatError(f"{self.path}: {name}: {err}") from err
                for class_name, layout in classes:
                    layouts[f"{namespace}.{class_name}"] = layout
        return layouts


def _string_list(literal: str) -> tuple[str, ...]:
    """`["a", "b", ]` -> ("a", "b"), parsed as a literal (never evaluated as code)."""
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError) as err:
        raise TorchScriptFormatError(f"cannot read the name list {literal!r:.200}") from err
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise TorchScriptFormatError(f"expected a list of names, got {literal!r:.200}")
    return tuple(value)


def _classes(source: str) -> list[tuple[str, _ModuleLayout | None]]:
    """(class name, layout or None) for each class in a printed TorchScript source file."""
    classes: list[tuple[str, dict[str, tuple[str, ...]] | None]] = []
    lists: dict[str, tuple[str, ...]] | None = None  # the current module class's lists; None outside one
    for line in source.splitlines():
        if line[:1] not in ("", " ", "\t"):  # a top-level line starts a class or ends the previous one
            match = _CLASS.match(line)
            lists = {} if match and match.group(2) else None
            if match:
                classes.append((match.group(1), lists))
        elif lists is not None and _SLOT_LIST_START.match(line):
            slot_list = _SLOT_LIST.match(line)
            if slot_list is None:
                raise TorchScriptFormatError(f"cannot read the class-level line {line.strip()!r:.200}")
            lists[slot_list.group(1)] = _string_list(slot_list.group(2))
    layouts: list[tuple[str, _ModuleLayout | None]] = []
    for name, lists in classes:
        if lists is not None and set(lists) != {"__parameters__", "__buffers__"}:
            raise TorchScriptFormatError(f"module class {name} does not list its parameters and buffers")
        layouts.append((name, None if lists is None else
                        _ModuleLayout(lists["__parameters__"], lists["__buffers__"])))
    return layouts


# ----------------------------------------------------------------------------------------------- state dict
_BUILTIN_CLASSES = "__torch__.torch.classes."  # C++ custom classes: no printed code, never modules


class _StateDictCollector:
    """Walks the recorded module tree the way Module.state_dict does: own parameters, own buffers (in
    attribute order), then submodules, with dotted names."""

    def __init__(self, path: str | Path, layouts: dict[str, _ModuleLayout | None]):
        self.path = path
        self.layouts = layouts
        self.out: dict[str, torch.Tensor] = {}
        self._open: set[int] = set()  # modules on the current path: a crafted cycle must not recurse forever

    def collect(self, module: ScriptObject, prefix: str = "") -> dict[str, torch.Tensor]:
        layout, state = self._module(module, prefix.removesuffix("."))
        self._open.add(id(module))
        for names in (layout.parameters, layout.buffers):
            for attr, value in state.items():
                if attr in names and value is not None:  # an absent optional parameter (bias=False) is None
                    if not isinstance(value, torch.Tensor):
                        raise TorchScriptFormatError(f"{self.path}: {prefix}{attr} is a "
                                                     f"{type(value).__name__}, not a tensor")
                    self.out[prefix + attr] = value
        for attr, value in state.items():
            if isinstance(value, ScriptObject) and self._is_module(value, prefix + attr):
                self.collect(value, f"{prefix}{attr}.")
        self._open.discard(id(module))
        return self.out

    def _is_module(self, obj: ScriptObject, name: str) -> bool:
        if obj.qualified_name in self.layouts:
            return self.layouts[obj.qualified_name] is not None
        if obj.qualified_name.startswith(_BUILTIN_CLASSES):
            return False
        # without its definition we cannot tell a submodule (whose weights would be lost) from another object
        raise TorchScriptFormatError(f"{self.path}: {name} is a {obj.qualified_name}, which the archive's code "
                                     "does not define")

    def _module(self, module: ScriptObject, name: str) -> tuple[_ModuleLayout, dict[str, Any]]:
        layout = self.layouts.get(module.qualified_name)
        if layout is None:
            raise TorchScriptFormatError(f"{self.path}: {name or 'the root'} is a {module.qualified_name}, "
                                         "which the archive's code does not define as a module")
        if id(module) in self._open:
            raise TorchScriptFormatError(f"{self.path}: {name} contains itself")
        state = getattr(module, "state", None)
        if not isinstance(state, dict):
            raise TorchScriptFormatError(f"{self.path}: module {module.qualified_name} has no attribute dictionary "
                                         "(modules with a custom __getstate__ are not supported)")
        return layout, state


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a TorchScript archive, as `torch.jit.load(path).state_dict()` names them.

    Tensors are on the CPU; tensors that share storage in the archive (tied weights) share it here.
    Raises RefusedGlobalError, before calling anything, if data.pkl names a global outside the allowlist.
    """
    with zipfile.ZipFile(path) as zf:
        archive = _Archive(path, zf)
        layouts = archive.class_layouts()
        with zf.open(archive.prefix + "data.pkl") as data:
            root = _RestrictedUnpickler(data, archive).load()
    if not isinstance(root, ScriptObject):
        raise TorchScriptFormatError(f"{path}: data.pkl holds a {type(root).__name__}, not a scripted module")
    return _StateDictCollector(path, layouts).collect(root)
