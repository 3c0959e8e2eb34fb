"""The external-data ``location``s an ONNX file names, read without the onnx package.

ONNX Runtime opens every tensor's ``location`` relative to the graph file, so a crafted graph can
make a session read any file on the machine (the path-traversal class onnx fixed as
CVE-2022-25882). The runtime checks each location before a session is made
(runtime/manifest.py), and the edge install has no onnx package: this walks protobuf's wire
format through the few messages that can hold a tensor, skipping everything else (raw weights
included) by its length, so a graph of hundreds of MB costs a few hundred field headers.
"""

from __future__ import annotations

import mmap
from pathlib import Path

# message -> {field number: message it holds} (onnx/onnx.proto3); "entry" is StringStringEntryProto
_CHILDREN = {
    "model": {7: "graph", 20: "training", 25: "function"},  # graph, training_info, functions
    "training": {1: "graph", 2: "graph"},  # initialization, algorithm
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # values, indices
    "tensor": {13: "entry"},  # external_data
    "entry": {},
}


class NotOnnx(ValueError):
    """The bytes are not a protobuf message this walker can read."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise NotOnnx(f"truncated or overlong varint at byte {pos}")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _walk(buf, kind: str, pos: int, end: int, out: list[str], depth: int = 0) -> None:
    if depth > 64:
        raise NotOnnx("messages nested deeper than 64")
    children = _CHILDREN[kind]
    key = value = None
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise NotOnnx(f"field {field} runs past its message (byte {pos})")
            if field in children:
                _walk(buf, children[field], pos, pos + n, out, depth + 1)
            elif kind == "entry" and field in (1, 2):
                text = bytes(buf[pos:pos + n]).decode("utf-8", "replace")
                key, value = (text, value) if field == 1 else (key, text)
            pos += n
        else:
            raise NotOnnx(f"wire type {wire} at byte {pos}")
    if pos != end:
        raise NotOnnx(f"a field runs past its message (byte {end})")
    if kind == "entry" and key == "location" and value is not None:
        out.append(value)


def external_data_locations(path: str | Path) -> list[str]:
    """Every external-data ``location`` in the ONNX file at ``path``, as written (not resolved).

    Raises NotOnnx when the file is not a readable protobuf message."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise NotOnnx("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            out: list[str] = []
            _walk(buf, "model", 0, len(buf), out)
            return out
