"""Idle orders kept as bytes: msgpack, then zstd with a dictionary the shard trains itself.

A packed order is its deadline-heap due time (8 bytes, so the heap can tell a superseded entry
without unpacking), a codec byte, and the msgpack array of its record. That drops the object
headers of its ints, tuples and bytes (~1,400 → ~450 bytes). Most of what is left looks alike
from order to order (id prefixes, `oms`, warehouse codes, statuses, near-equal timestamps), so
once a shard has packed `TRAIN_ON` orders it trains a small zstd dictionary on them and
compresses every later one with it (~450 → ~190 bytes for ~1.5 µs; ~0.6 µs to unpack), in
frames without zstd's magic number (every blob is the packer's own).
A dictionary from a shard's own orders fits whatever ids and values a deployment has. It is
part of the shard's state: snapshots carry it, so packed orders read back after a resume.

Training takes ~25 ms, and under an even load every shard of a process gets there within the
same second: done in line, that stalled the dataflow for ~0.5 s (alerts due meanwhile waited).
So it runs in a background thread (zstd releases the GIL while it trains), one shard after
another; the shard packs raw until its dictionary is in, then compresses the raw ones
(`take_fresh`). Which orders were packed raw depends on timing, but nothing read from a packed
order does.
"""

from __future__ import annotations

import struct
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec
import zstandard

from orderwatch.domain.order import OrderRec

TRAIN_ON = 1000  # packed orders sampled before the dictionary is trained
_DICT_BYTES = 8192
_LEVEL = 3
# Frames without zstd's 4-byte magic number: every blob is ours, and 4 bytes is ~1% per order
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS
_PARAMS = zstandard.ZstdCompressionParameters.from_level(
    _LEVEL, format=_FORMAT, write_checksum=0, write_dict_id=0
)
_RAW, _ZSTD = 0, 1
_HEAD = struct.Struct("<qB")  # due time, codec
_NO_DUE = -(1 << 63)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(OrderRec).decode
_TRAINER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orderwatch-zstd-train")


def _train(samples: list[Any]) -> bytes | None:  # Any: the stub wants a list of any buffer
    """A dictionary learnt from `samples`, or None when zstd cannot learn one (too little)."""
    try:
        return zstandard.train_dictionary(_DICT_BYTES, samples).as_bytes()
    except zstandard.ZstdError:
        return None


def packed_due(blob: bytes) -> int | None:
    """The due time of a packed order's live heap entry, read without unpacking."""
    due: int = _HEAD.unpack_from(blob)[0]
    return None if due == _NO_DUE else due


class Packer:
    """Packs and unpacks one shard's orders; `compress=False` keeps plain msgpack."""

    def __init__(self, compress: bool = True) -> None:
        self._samples: list[bytes] | None = [] if compress else None
        self._dict: bytes | None = None
        self._training: Future[bytes | None] | None = None
        self._fresh = False  # a dictionary came in since `take_fresh` last looked
        self._setup()

    @property
    def compressing(self) -> bool:
        return self._dict is not None

    def pack(self, rec: OrderRec) -> bytes:
        """The packed form of `rec`; `rec` itself must not be used afterwards."""
        due = _NO_DUE if rec.due is None else rec.due
        rec.due = rec.oid = None
        raw = _encode(rec)
        if self._zc is not None:
            return _HEAD.pack(due, _ZSTD) + self._zc.compress(raw)
        samples = self._samples
        if samples is not None:
            samples.append(raw)
            if len(samples) >= TRAIN_ON:
                self._training = _TRAINER.submit(_train, samples)
                self._samples = None
        elif self._training is not None and self._training.done():
            self.settle()
        return _HEAD.pack(due, _RAW) + raw

    def unpack(self, blob: bytes, oid: str) -> OrderRec:
        due, codec = _HEAD.unpack_from(blob)
        body = memoryview(blob)[_HEAD.size :]
        rec = _decode(self._zd.decompress(body) if codec == _ZSTD else body)  # type: ignore[union-attr]
        rec.due = None if due == _NO_DUE else due
        rec.oid = oid
        return rec

    def recompress(self, blob: bytes) -> bytes:
        """`blob` compressed, if it was packed before the dictionary existed."""
        if self._zc is None or blob[_HEAD.size - 1] != _RAW:
            return blob
        return blob[: _HEAD.size - 1] + bytes((_ZSTD,)) + self._zc.compress(blob[_HEAD.size :])

    def settle(self) -> None:
        """Wait for a training in flight, if any, and use its dictionary from now on (none:
        zstd could not learn one, and the shard stays uncompressed)."""
        if self._training is None:
            return
        self._dict = self._training.result()
        self._training = None
        self._fresh = self._dict is not None
        self._setup()

    def take_fresh(self) -> bool:
        """True once after a dictionary came in: the raw blobs packed before it can now be
        compressed (`recompress`)."""
        fresh, self._fresh = self._fresh, False
        return fresh

    def _setup(self) -> None:
        self._zc: zstandard.ZstdCompressor | None = None
        self._zd: zstandard.ZstdDecompressor | None = None
        if self._dict is not None:
            zdict = zstandard.ZstdCompressionDict(self._dict)
            zdict.precompute_compress(compression_params=_PARAMS)
            self._zc = zstandard.ZstdCompressor(dict_data=zdict, compression_params=_PARAMS)
            self._zd = zstandard.ZstdDecompressor(dict_data=zdict, format=_FORMAT)

    def __getstate__(self) -> tuple[list[bytes] | None, bytes | None, bool]:
        self.settle()  # a snapshot waits for a training in flight (tens of ms, once a shard)
        return self._samples, self._dict, self._fresh  # zstd objects: rebuilt from the dict

    def __setstate__(self, state: tuple[Any, Any, bool]) -> None:
        self._samples, self._dict, self._fresh = state
        self._training = None
        self._setup()
