"""CIFAR files are unpickled without running code (kdcore_vision.datasets.safe_pickle), and every
bad file stops the build with one line naming it and the fix (re-download the archive)."""

from __future__ import annotations

import os
import pickle
import pickletools
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore_vision.datasets import safe_pickle

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"


@pytest.fixture
def build(registry):
    def build(name, **params):
        spec = registry.get("dataset", name).spec
        return spec.builder()(spec.params(**params), DatasetContext(seed=0))
    return build


def _refusal(build, name: str, path: Path, **params) -> str:
    """The build's error: one line that names ``path`` and says to re-download the archive."""
    with pytest.raises(KdcoreError) as error:
        build(name, root=str(path.parent.parent), **params)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert "re-download cifar-10" in message or "re-download cifar-100" in message
    assert "www.cs.toronto.edu/~kriz/cifar.html" in message
    return message


def _globals(data: bytes) -> list[str]:
    """The ``module name`` of every global a pickle names."""
    found, strings = [], []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "INST"):
            found.append(argument)
        elif opcode.name == "STACK_GLOBAL":
            found.append(" ".join(strings[-2:]))
        elif isinstance(argument, str):
            strings.append(argument)
    return found


# --- crafted files run nothing ---------------------------------------------------------------

class RunsOnLoad:
    """Unpickles as ``call(*args)``."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


class Nested:
    """An ordinary object: unpickling it imports this test module and builds an instance."""

    def __init__(self):
        self.value = 1


def _write_marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


PAYLOADS = {
    # name: (the object hidden in the file, protocol, the global the refusal names)
    "os.system": (lambda m: RunsOnLoad(os.system, f"touch {m}"), 5, "posix.system"),
    "os.system, protocol 2": (lambda m: RunsOnLoad(os.system, f"touch {m}"), 2, "posix.system"),
    "builtins.exec": (lambda m: RunsOnLoad(exec, _write_marker_code(m)), 5, "builtins.exec"),
    "builtins.exec, protocol 2": (lambda m: RunsOnLoad(exec, _write_marker_code(m)), 2, "__builtin__.exec"),
    "builtins.eval": (lambda m: RunsOnLoad(eval, _write_marker_code(m)), 5, "builtins.eval"),
    "subprocess.Popen": (lambda m: RunsOnLoad(subprocess.Popen, ["touch", str(m)]), 5, "subprocess.Popen"),
    "Path.touch": (lambda m: RunsOnLoad(Path.touch, m), 5, "pathlib.Path.touch"),
    "getattr, protocol 2": (lambda m: RunsOnLoad(Path.touch, m), 2, "__builtin__.getattr"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_batch_runs_nothing_and_names_the_global(build, write_cifar10, tmp_path, payload):
    make, protocol, name = PAYLOADS[payload]
    marker = tmp_path / "ran"
    write_cifar10(tmp_path)
    path = tmp_path / CIFAR10_DIR / "data_batch_1"
    content = {b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19 + [make(marker)]}
    path.write_bytes(pickle.dumps(content, protocol=protocol))

    message = _refusal(build, "cifar10", path)
    assert not marker.exists()
    assert f"refused to unpickle {name} " in message and "could run code" in message

    # the same file given to pickle.load does run the payload: the test is not vacuous
    with open(path, "rb") as file:
        loaded = pickle.load(file, encoding="bytes")
    if isinstance(loaded[b"labels"][-1], subprocess.Popen):
        loaded[b"labels"][-1].wait()
    assert marker.exists()


def test_a_nested_object_is_refused(build, write_cifar10, tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / CIFAR10_DIR / "test_batch"
    nested = {b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20, b"extra": {b"deep": [Nested()]}}
    path.write_bytes(pickle.dumps(nested, protocol=2))
    message = _refusal(build, "cifar10", path)
    assert f"refused to unpickle {__name__}.Nested " in message


# hand-written instruction streams: every way a pickle can name a global, and the other hooks
RAW_STREAMS = {
    "GLOBAL": (b"cos\nsystem\n(S'touch {m}'\ntR.", "os.system"),
    "INST": (b"(S'touch {m}'\nios\nsystem\n.", "os.system"),
    "OBJ": (b"(cos\nsystem\nS'touch {m}'\no.", "os.system"),
    "STACK_GLOBAL": (b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x0atouch {m}\x85R.", "os.system"),
    "builtins.eval": (b"c__builtin__\neval\n(S'open(\"{m}\", \"w\")'\ntR.", "__builtin__.eval"),
    "subprocess.Popen": (b"csubprocess\nPopen\n((S'touch'\nS'{m}'\nltR.", "subprocess.Popen"),
    "another codec through _codecs.encode": (b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",
                                             "_codecs.encode with arguments other than (str, 'latin1')"),
    "a persistent id": (b"Pfoo\n.", "a persistent id"),
}


@pytest.mark.parametrize("stream", RAW_STREAMS)
def test_every_instruction_that_names_a_global_is_refused(tmp_path, stream):
    template, name = RAW_STREAMS[stream]
    marker = tmp_path / "ran"
    path = tmp_path / "data_batch_1"
    path.write_bytes(template.replace(b"{m}", str(marker).encode()))
    with pytest.raises(KdcoreError) as error:
        safe_pickle.load(path, "the fix")
    assert str(error.value).startswith(f"{path}: refused to unpickle {name} ")
    assert str(error.value).endswith("; the fix") and "\n" not in str(error.value)
    assert not marker.exists()


def test_a_global_after_genuine_arrays_is_refused(tmp_path):
    """The check is per name, wherever it comes: admitted numpy globals first do not open the
    door to later ones."""
    marker = tmp_path / "ran"
    path = tmp_path / "data_batch_1"
    genuine = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)
    hidden = pickle.dumps(RunsOnLoad(os.system, f"touch {marker}"), protocol=2)
    # a list of the genuine dict and the payload: EMPTY_LIST, MARK, both bodies, APPENDS, STOP
    path.write_bytes(b"\x80\x02](" + genuine[2:-1] + hidden[2:-1] + b"e.")
    *admitted, last = _globals(path.read_bytes())
    assert len(admitted) >= 3 and last == "posix system"
    assert all(tuple(name.split(" ")) in safe_pickle.ALLOWED for name in admitted)
    with pytest.raises(KdcoreError, match=r"refused to unpickle posix\.system "):
        safe_pickle.load(path, "the fix")
    assert not marker.exists()


def test_the_allow_list_is_exactly_the_numpy_array_globals():
    assert set(safe_pickle.ALLOWED) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }


@pytest.mark.parametrize("name", sorted(" ".join(key) for key in safe_pickle.ALLOWED))
def test_a_file_cannot_change_an_admitted_object(tmp_path, name):
    """A pickle's BUILD sets attributes of what it built: on numpy's _frombuffer (a Python function)
    it would change its __defaults__ for the whole process. The admitted objects have nothing it
    can set."""
    module, attribute = name.split(" ")
    admitted = safe_pickle.ALLOWED[(module, attribute)]
    path = tmp_path / "data_batch_1"
    for state in (b"N}\x8c\x0c__defaults__K\x01\x85s\x86", b"}\x8c\x01xK\x01s"):  # slot state, dict state
        path.write_bytes(b"\x80\x04c" + name.replace(" ", "\n").encode() + b"\n" + state + b"b.")
        with pytest.raises(KdcoreError, match=r"not a valid pickle \((Type|Attribute)Error: "):
            safe_pickle.load(path, "the fix")
        assert getattr(admitted, "__defaults__", None) is None and not hasattr(admitted, "x")


@pytest.mark.parametrize("variant, params, folder, file", [
    ("semisup-cifar10", {"labeled": 40}, CIFAR10_DIR, "data_batch_3"),
    ("binary-cifar", {}, CIFAR10_DIR, "test_batch"),
    ("binary-cifar", {"base": "cifar100", "positive": [20], "negative": [40]}, CIFAR100_DIR, "train"),
])
def test_the_variants_read_through_the_same_guard(build, write_cifar10, write_cifar100, tmp_path,
                                                  variant, params, folder, file):
    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    marker = tmp_path / "ran"
    path = tmp_path / folder / file
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                   b"labels": [RunsOnLoad(os.system, f"touch {marker}"), 0]}))
    assert "refused to unpickle posix.system " in _refusal(build, variant, path, **params)
    assert not marker.exists()

    path.write_bytes(b"")
    assert "the file is empty (0 bytes)" in _refusal(build, variant, path, **params)


# --- the official format still loads --------------------------------------------------------

def _py2_str(data: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it: SHORT_BINSTRING, or BINSTRING when long."""
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)


def _py2_pickle(value) -> bytes:
    """``value`` (dicts, lists, bytes, ints, uint8 matrices) pickled as Python 2's cPickle with
    numpy 1.x wrote the official CIFAR files at protocol 2."""
    if isinstance(value, dict):
        return b"}(" + b"".join(_py2_pickle(k) + _py2_pickle(v) for k, v in value.items()) + b"u"
    if isinstance(value, list):
        return b"](" + b"".join(_py2_pickle(item) for item in value) + b"e"
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, int):
        return _py2_int(value)
    rows, columns = value.shape
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R(" + _py2_int(3) \
        + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + _py2_int(0) + b"tb"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
            + _py2_str(b"b") + b"\x87R(" + _py2_int(1) + _py2_int(rows) + _py2_int(columns) + b"\x86"
            + dtype + b"\x89" + _py2_str(value.tobytes()) + b"tb")


def _rewrite(folder: Path, dump) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as file:
            content = pickle.load(file, encoding="bytes")
        path.write_bytes(dump(content))


def _same_splits(first, second) -> bool:
    return all(torch.equal(getattr(a, key), getattr(b, key))
               for a, b in ((first.train, second.train), (first.test, second.test))
               for key in ("inputs", "labels"))


def test_safe_load_equals_pickle_load_on_the_official_format(write_cifar10, write_cifar100, tmp_path):
    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    paths = [*sorted((tmp_path / CIFAR10_DIR).iterdir()), *sorted((tmp_path / CIFAR100_DIR).iterdir())]
    assert len(paths) == 10
    for path in paths:
        with open(path, "rb") as file:
            expected = pickle.load(file, encoding="bytes")
        loaded = safe_pickle.load(path, "the fix")
        assert loaded.keys() == expected.keys() and all(isinstance(key, bytes) for key in loaded)
        for key, value in expected.items():
            if isinstance(value, np.ndarray):
                assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value)
            else:
                assert loaded[key] == value


@pytest.mark.parametrize("protocol", [0, 2, 4, pickle.HIGHEST_PROTOCOL])
def test_arrays_of_any_layout_load_at_any_protocol(tmp_path, protocol):
    matrix = np.arange(6 * 3072, dtype=np.uint8).reshape(6, 3072)
    content = {b"c": matrix, b"f": np.asfortranarray(matrix), b"t": matrix.T, b"i": np.arange(5, dtype=np.int32),
               "text": ["a", 1, 2.5, None, True, (b"x",)]}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    loaded = safe_pickle.load(path, "the fix")
    assert loaded.keys() == content.keys() and loaded["text"] == content["text"]
    for key in (b"c", b"f", b"t", b"i"):
        assert loaded[key].dtype == content[key].dtype and np.array_equal(loaded[key], content[key])

    # Python 3 writes empty bytes (an empty array's data) at protocols 0-2 as bytes(), a call no
    # official file holds: that one is refused too
    path.write_bytes(pickle.dumps(np.zeros((0, 3072), np.uint8), protocol=protocol))
    if protocol <= 2:
        with pytest.raises(KdcoreError, match=r"refused to unpickle __builtin__\.bytes "):
            safe_pickle.load(path, "the fix")
    else:
        assert safe_pickle.load(path, "the fix").shape == (0, 3072)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_loads_identically_at_any_protocol(build, write_cifar10, write_cifar100, tmp_path, protocol):
    written10 = write_cifar10(tmp_path / "a")
    written100 = write_cifar100(tmp_path / "a")
    expected10, expected100 = build("cifar10", root=str(tmp_path / "a")), build("cifar100", root=str(tmp_path / "a"))
    assert torch.equal(expected10.train.inputs, torch.from_numpy(written10.train_data).reshape(-1, 3, 32, 32))
    assert torch.equal(expected100.test.labels, torch.from_numpy(written100.test_labels))
    write_cifar10(tmp_path / "b")
    write_cifar100(tmp_path / "b")
    _rewrite(tmp_path / "b" / CIFAR10_DIR, lambda content: pickle.dumps(content, protocol=protocol))
    _rewrite(tmp_path / "b" / CIFAR100_DIR, lambda content: pickle.dumps(content, protocol=protocol))
    data = (tmp_path / "b" / CIFAR10_DIR / "data_batch_1").read_bytes()
    assert data[1] == protocol
    assert _same_splits(build("cifar10", root=str(tmp_path / "b")), expected10)
    assert _same_splits(build("cifar100", root=str(tmp_path / "b")), expected100)


def test_cifar_loads_files_written_by_python2(build, write_cifar10, write_cifar100, tmp_path):
    """The official archives' files: protocol 2, Python 2 strings (read as bytes), numpy 1.x's
    names for the array's reconstructor."""
    for root in ("a", "b"):
        write_cifar10(tmp_path / root)
        write_cifar100(tmp_path / root)
    for folder in (CIFAR10_DIR, CIFAR100_DIR):
        _rewrite(tmp_path / "b" / folder, lambda content: b"\x80\x02" + _py2_pickle(content) + b".")
    data = (tmp_path / "b" / CIFAR10_DIR / "data_batch_1").read_bytes()
    assert sorted(set(_globals(data))) == ["numpy dtype", "numpy ndarray", "numpy.core.multiarray _reconstruct"]
    for name in ("cifar10", "cifar100", "semisup-cifar10", "binary-cifar"):
        params = {"labeled": 40} if name == "semisup-cifar10" else {}
        assert _same_splits(build(name, root=str(tmp_path / "b"), **params),
                            build(name, root=str(tmp_path / "a"), **params))


def test_labels_may_be_a_numpy_array(build, write_cifar10, tmp_path):
    written = write_cifar10(tmp_path)
    path = tmp_path / CIFAR10_DIR / "test_batch"
    with open(path, "rb") as file:
        content = pickle.load(file, encoding="bytes")
    content[b"labels"] = np.asarray(content[b"labels"], dtype=np.int32)
    path.write_bytes(pickle.dumps(content, protocol=2))
    assert torch.equal(build("cifar10", root=str(tmp_path)).test.labels, torch.from_numpy(written.test_labels))


# --- bad files: one line naming the file and the fix ----------------------------------------

def test_empty_truncated_and_garbage_files(build, write_cifar10, tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / CIFAR10_DIR / "data_batch_2"
    genuine = path.read_bytes()

    path.write_bytes(b"")
    assert "the file is empty (0 bytes)" in _refusal(build, "cifar10", path)
    for cut in (1, 2, 40, len(genuine) // 2, len(genuine) - 1):
        path.write_bytes(genuine[:cut])
        assert f"the pickle ends early after {cut} bytes (the file is truncated" in _refusal(build, "cifar10", path)
    path.write_bytes(b"<html><body>404 Not Found</body></html>\n")
    assert "not a Python pickle (it starts with b'<html><b')" in _refusal(build, "cifar10", path)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "not a Python pickle (it starts with b'" in _refusal(build, "cifar10", path)
    path.write_bytes(b"hello, this is text\n")  # 'h' is an instruction of protocol 0
    assert "not a Python pickle (it starts with b'hello, t')" in _refusal(build, "cifar10", path)
    path.write_bytes(b"\x80\x02" + b"\x82\x01.")  # a copyreg extension code nobody registered
    assert "not a valid pickle (ValueError: unregistered extension code 1)" in _refusal(build, "cifar10", path)


@pytest.mark.parametrize("content, problem", [
    ([1, 2, 3], "holds a list, not a dict (a CIFAR-10 batch is a dict with keys b'data' and b'labels')"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "has no key b'labels' (its keys: b'data')"),
    ({"data": 1, "labels": 2}, "has no key b'data' or b'labels' (its keys: 'data', 'labels')"),
    ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, "b'data' is a list, expected a uint8 numpy array"),
    ({b"data": np.zeros((2, 3072)), b"labels": [0, 1]}, "b'data' is float64 of shape (2, 3072), expected"),
    ({b"data": np.zeros((2, 32, 32, 3), np.uint8), b"labels": [0, 1]}, "b'data' is uint8 of shape (2, 32, 32, 3)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]}, "b'labels' is a list holding a bytes"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": 3}, "b'labels' is a int, expected a list of ints"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels in b'labels' for 2 images in b'data'"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside 0..9 (found 0 to 10)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 2 ** 70]}, "labels outside 0..9"),
])
def test_a_pickle_of_the_wrong_structure(build, write_cifar10, tmp_path, content, problem):
    write_cifar10(tmp_path)
    path = tmp_path / CIFAR10_DIR / "data_batch_4"
    path.write_bytes(pickle.dumps(content, protocol=2))
    assert problem in _refusal(build, "cifar10", path)


def test_cifar100_messages_name_its_archive(build, write_cifar100, tmp_path):
    write_cifar100(tmp_path)
    path = tmp_path / CIFAR100_DIR / "test"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    message = _refusal(build, "cifar100", path)
    assert "has no key b'fine_labels'" in message and "re-download cifar-100-python.tar.gz" in message
