"""Read the tensors of a TorchScript archive (OpenAI's published ``.pt`` files) without running any of its code; and
``torch.save`` archives that carry a research codebase's config object beside their tensors (ViFi-CLIP pickles its
yacs ``CfgNode``), which ``weights_only=True`` refuses, read the same restricted way (``read_torch_save``).

``torch.jit.load`` compiles and runs the archive's code while loading and has no safe mode. Here the archive's
``data.pkl`` is read by a restricted unpickler that can only build tensors, ordered dicts and inert stand-ins for the
scripted module objects; any other global is refused before it is resolved. Which attributes are parameters or
buffers is read as text from the ``__parameters__``/``__buffers__`` lines of the archive's ``code/`` files, the same
lists ``torch.jit.load(path).state_dict()`` obeys, and never executed.
"""
from __future__ import annotations

import ast
import io
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

MAX_PICKLE_BYTES = 64 << 20  # data.pkl of ViT-L/14 is < 1 MiB; anything this large is not a CLIP archive
MAX_TENSOR_BYTES = 16 << 30  # the largest published CLIP (RN50x64) is ~1.3 GB in fp16

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def is_torchscript_archive(names: list[str]) -> bool:
    """A TorchScript zip has ``<root>/data.pkl`` beside ``<root>/code/`` and ``<root>/constants.pkl``."""
    roots = {n.split("/", 1)[0] for n in names if n.endswith("/data.pkl") and n.count("/") == 1}
    return any(f"{r}/constants.pkl" in names and any(n.startswith(f"{r}/code/") for n in names) for r in roots)


class _ScriptObject:
    """Inert stand-in for a scripted module: it only records its class name and its attribute dict."""

    def __init__(self, qualname: str):
        self.qualname = qualname
        self.attrs: dict[str, Any] = {}

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"scripted object {self.qualname} has non-dict state {type(state).__name__}")
        self.attrs = state


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _restricted_build(self: Any) -> None:
    """BUILD (set an object's state) only on the inert stand-ins this module creates: never on a tensor or on one
    of the allowed functions."""
    obj = self.stack[-2]
    if not isinstance(obj, (_ScriptObject, InertConfig, _PlainDict)):
        raise CheckpointError(f"{self.path}: refusing to load: the pickle sets the state of a "
                              f"{type(obj).__name__}; nothing from it was run")
    pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler (its opcode table can be restricted, the C one's cannot) with an allowlist of globals
    and BUILD limited to the inert stand-ins. data.pkl files are small: the tensors are separate zip entries."""

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _restricted_build

    def __init__(self, data: bytes, zf: zipfile.ZipFile, root: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.zf, self.root, self.path = zf, root, path
        self.storages: dict[str, torch.Tensor] = {}
        self.total_bytes = 0

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            return type(name, (_ScriptObject,), {"__new__": lambda cls: _new_script_object(cls, qualname)})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return _empty_ordered_dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(
            f"{self.path}: refusing TorchScript archive: data.pkl references {module}.{name}, which is not a tensor "
            "or module; nothing from it was run"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: unexpected persistent id in TorchScript archive: {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if key in self.storages:
            return self.storages[key]
        member = f"{self.root}/data/{key}"
        try:
            info = self.zf.getinfo(member)
            if info.compress_type != zipfile.ZIP_STORED:  # torch writes them stored; a compressed one could expand
                raise CheckpointError(f"{self.path}: tensor record {member} is compressed, which torch never writes")
        except KeyError:
            raise CheckpointError(f"{self.path}: TorchScript archive lacks tensor data {member}") from None
        nbytes = int(numel) * torch.empty(0, dtype=stype.dtype).element_size()
        self.total_bytes += info.file_size
        if info.file_size != nbytes or self.total_bytes > MAX_TENSOR_BYTES:
            raise CheckpointError(
                f"{self.path}: tensor record {member} holds {info.file_size} bytes where {nbytes} were declared "
                f"(running total {self.total_bytes}, cap {MAX_TENSOR_BYTES})"
            )
        flat = torch.frombuffer(bytearray(self.zf.read(member)), dtype=stype.dtype) if nbytes else torch.empty(
            0, dtype=stype.dtype)
        self.storages[key] = flat
        return flat


class InertConfig(dict):
    """What a pickled yacs ``CfgNode`` becomes: its items and its attribute state as plain data, no yacs code."""

    def __setstate__(self, state: dict) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}


class _PlainDict(dict):
    """An OrderedDict read back (insertion order is kept by dict); a state dict's ``_metadata`` is dropped."""

    def __setstate__(self, state: Any) -> None:
        pass


# torch.save globals besides tensors that a checkpoint may hold as plain data: OrderedDict, set (a py2 pickle names
# it __builtin__.set), and yacs' CfgNode (a dict subclass), read as InertConfig.
_TORCH_SAVE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _PlainDict, ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("yacs.config", "CfgNode"): InertConfig,
}


class _TorchSaveUnpickler(_RestrictedUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_SAVE_GLOBALS:
            return _TORCH_SAVE_GLOBALS[module, name]
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")):
            return _rebuild_tensor if name == "_rebuild_tensor_v2" else _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(f"{self.path}: refusing to load: the pickle references {module}.{name}, which is not "
                              "a tensor or plain data; nothing from it was run")


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("a parameter is rebuilt from something that is not a tensor")
    return data


def read_torch_save(path: str | Path) -> Any:
    """The object in a ``torch.save`` zip whose pickle holds only tensors, containers and plain data, plus the
    config objects in ``_TORCH_SAVE_GLOBALS`` as inert data. Any other global is refused before it is resolved, so
    nothing in the file runs (``torch.load(weights_only=False)`` is never used)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a torch.save zip archive") from None
    with zf:
        names = zf.namelist()
        root = next((n.split("/", 1)[0] for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if root is None:
            raise CheckpointError(f"{path}: a zip without <root>/data.pkl is not a torch.save archive")
        info = zf.getinfo(f"{root}/data.pkl")
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{path}: data.pkl is {info.file_size} bytes, over the {MAX_PICKLE_BYTES} cap")
        try:
            return _TorchSaveUnpickler(zf.read(info), zf, root, path).load()
        except CheckpointError:
            raise
        except Exception as e:  # a malformed stream: report, never fall back to a permissive loader
            raise CheckpointError(f"{path}: unreadable torch.save data.pkl: {type(e).__name__}: {e}") from None


def _new_script_object(cls: type[_ScriptObject], qualname: str) -> _ScriptObject:
    obj = object.__new__(cls)
    _ScriptObject.__init__(obj, qualname)
    return obj


def _empty_ordered_dict(*args: Any) -> dict:
    if args:
        raise CheckpointError("TorchScript archive builds an OrderedDict with arguments; only empty ones are expected")
    return {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("TorchScript archive rebuilds a tensor from something that is not a stored tensor")
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if math.prod(size) > storage.numel():  # a view with repeated (zero-stride) elements: any later copy would grow it
        raise CheckpointError(f"tensor of size {tuple(size)} has more elements than its storage ({storage.numel()})")
    if offset < 0 or any(s < 0 for s in size) or any(st < 0 for st in stride) or extent > storage.numel():
        raise CheckpointError(f"tensor of size {tuple(size)} at offset {offset} overruns its storage of {storage.numel()}")
    return storage.as_strided(tuple(size), tuple(stride), offset)


_CLASS_RE = r"class {name}\(Module\):\n  __parameters__ = (\[[^\]]*\])\n  __buffers__ = (\[[^\]]*\])"


def _tensor_slots(zf: zipfile.ZipFile, root: str, qualname: str, cache: dict) -> tuple[list[str], list[str]]:
    """(parameters, buffers) of a scripted class, read from its code file as text."""
    if qualname not in cache:
        module, name = qualname.rsplit(".", 1)
        member = f"{root}/code/{module.replace('.', '/')}.py"
        try:
            source = zf.read(member).decode("utf-8")
        except KeyError:
            raise CheckpointError(f"TorchScript archive lacks the code file {member} for class {qualname}") from None
        m = re.search(_CLASS_RE.format(name=re.escape(name)), source)
        if m is None:
            raise CheckpointError(f"cannot find the parameter lists of class {name} in {member}")
        cache[qualname] = (ast.literal_eval(m.group(1)), ast.literal_eval(m.group(2)))
    return cache[qualname]


def _collect(obj: _ScriptObject, prefix: str, out: dict, zf: zipfile.ZipFile, root: str, cache: dict) -> None:
    """Walk scripted modules in nn.Module.state_dict order: own parameters, own buffers, then submodules."""
    params, buffers = _tensor_slots(zf, root, obj.qualname, cache)
    for name in [*params, *buffers]:
        value = obj.attrs.get(name)
        if isinstance(value, torch.Tensor):  # None for optional parameters such as a missing bias
            out[prefix + name] = value
    for name, value in obj.attrs.items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out, zf, root, cache)


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive, equal to ``torch.jit.load(path).state_dict()``, without running code."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if not is_torchscript_archive(names):
            raise CheckpointError(f"{path}: not a TorchScript archive (no <root>/data.pkl beside code/)")
        root = next(n.split("/", 1)[0] for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
        info = zf.getinfo(f"{root}/data.pkl")
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{path}: data.pkl is {info.file_size} bytes, over the {MAX_PICKLE_BYTES} cap")
        unpickler = _RestrictedUnpickler(zf.read(info), zf, root, path)
        try:
            top = unpickler.load()
        except CheckpointError:
            raise
        except Exception as e:  # malformed pickle stream: report, never fall back to a permissive loader
            raise CheckpointError(f"{path}: unreadable TorchScript data.pkl: {type(e).__name__}: {e}") from None
        if not isinstance(top, _ScriptObject):
            raise CheckpointError(f"{path}: TorchScript data.pkl does not hold a scripted module")
        out: dict[str, torch.Tensor] = {}
        _collect(top, "", out, zf, root, {})
        return out
