"""A decoded-audio store: every clip decoded and resampled once, then read from disk by later epochs and runs.

API::

    store = AudioStore(root, sample_rate=32000, dtype="int16")   # or dtype="float32" (lossless, twice the size)
    entry = store.ensure(path)           # decode + write once; StoredClip(length, lossless, file)
    wave = store.read(path, start, stop) # float32 samples start:stop, reading only those from disk
    wave = store.read(path, exact=True)  # exactly read_audio(path, sample_rate): lossy entries are decoded again

Layout: ``<root>/v<STORE_VERSION>/sr<rate>-<dtype>/<k[:2]>/<k>.pcm``, one file per clip, where ``k`` hashes the
source file's resolved path, size and modification time (ns): a changed or replaced source file gets a new key
and is decoded again (the old entry is left behind, unused). A file is a 32-byte header (magic, version, dtype,
lossless flag, sample count, scale) followed by the raw little-endian samples, read through ``numpy.memmap`` so that
a training crop reads only its own pages.

Numbers. ``float32`` entries hold :func:`~hear_dymn.bench.audio.read_audio`'s output bit for bit. ``int16`` entries
(the default: 2 bytes a sample at 32 kHz, smaller than the 16-bit 44.1 kHz sources of ESC-50 and FSD50K) hold
``round(x / scale)`` with ``scale = 2**-15`` (``1/scale`` when a clip peaks above 32767/32768): exact when the
decoded clip is 16-bit PCM already (a mono 16-bit file at the target rate), otherwise quantised, an error of at
most half a step (1.5e-5 of full scale), which is what a 16-bit file carries anyway. Each entry records whether it
is exact; ``read(..., exact=True)`` serves only exact entries, so evaluation and embedding extraction never see
the quantisation, while training (``exact=False``) reads any entry.

Atomicity: an entry is written to a temporary file in its folder and renamed into place, so a killed run leaves
whole entries or none; an entry whose size disagrees with its header (e.g. after a power loss) is treated as
missing and written again. Concurrent writers (loader workers, torchrun processes) of the same entry write the same
bytes. There is no fsync per clip: a store of 51k clips would spend minutes on it, and the size check covers what a
crash can leave.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import read_audio

__all__ = ["AudioStore", "StoredClip", "STORE_VERSION", "DTYPES"]

STORE_VERSION = 1  # bump when the file format or the decoding behind it changes
MAGIC = b"HDAS"
HEADER = struct.Struct("<4sHBBQd8x")  # magic, version, dtype code, lossless, samples, scale; 32 bytes
DTYPES = {"int16": (1, np.dtype("<i2")), "float32": (2, np.dtype("<f4"))}
_CODES = {code: name for name, (code, _) in DTYPES.items()}
INT16_STEP = 2.0 ** -15  # what 16-bit PCM decodes to per step (libsndfile's float scaling)


@dataclass(frozen=True)
class StoredClip:
    """One entry: its file, sample count, whether it reproduces the decode exactly, and its int16 scale."""

    file: Path
    length: int
    lossless: bool
    scale: float
    dtype: str


class AudioStore:
    """Decoded clips at ``sample_rate`` under ``root`` (see the module docstring). Picklable: loader workers get
    the root and settings only."""

    def __init__(self, root: str | os.PathLike[str], sample_rate: int = 32000, dtype: str = "int16") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"audio store dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.root = Path(root)
        self.sample_rate = int(sample_rate)
        self.dtype = dtype
        self.folder = self.root / f"v{STORE_VERSION}" / f"sr{self.sample_rate}-{dtype}"

    @property
    def lossless(self) -> bool:
        """Every entry is exact (float32 stores)."""
        return self.dtype == "float32"

    def describe(self) -> str:
        exact = "exact" if self.lossless else "16-bit, exact only for 16-bit PCM sources at this rate"
        return f"audio store v{STORE_VERSION} {self.dtype} at {self.sample_rate} Hz ({exact})"

    def __repr__(self) -> str:
        return f"AudioStore({str(self.root)!r}, sample_rate={self.sample_rate}, dtype={self.dtype!r})"

    # ------------------------------------------------------------------------------------------------------------

    def key(self, source: str | os.PathLike[str]) -> str:
        """The entry key of ``source`` as it is now: resolved path, size and modification time in ns."""
        path = Path(source).resolve()
        stat = path.stat()
        blob = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def file_for(self, source: str | os.PathLike[str]) -> Path:
        key = self.key(source)
        return self.folder / key[:2] / f"{key}.pcm"

    def lookup(self, source: str | os.PathLike[str]) -> StoredClip | None:
        """The valid entry of ``source``, or ``None`` (not stored yet, source changed, or a damaged file)."""
        try:
            file = self.file_for(source)
        except OSError:
            return None  # the source is gone: nothing can be valid for it
        return _read_header(file)

    def ensure(self, source: str | os.PathLike[str]) -> StoredClip:
        """The entry of ``source``, decoding and writing it first if needed.

        Raises:
            AudioReadError: the source cannot be decoded (nothing is stored for it).
        """
        entry = self.lookup(source)
        if entry is not None:
            return entry
        wave = read_audio(source, self.sample_rate)
        return self._write(self.file_for(source), wave)

    def read(self, source: str | os.PathLike[str], start: int = 0, stop: int | None = None,
             exact: bool = False) -> np.ndarray:
        """Samples ``start:stop`` of ``source`` as float32 (Python slice semantics, non-negative ``start``).

        ``exact=True`` returns what ``read_audio(source, sample_rate)[start:stop]`` returns, decoding the source
        again when its entry is quantised.
        """
        entry = self.ensure(source)
        if exact and not entry.lossless:
            return read_audio(source, self.sample_rate)[start:stop]
        return _samples(entry, start, stop)

    def _write(self, file: Path, wave: np.ndarray) -> StoredClip:
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if self.dtype == "float32":
            data, scale, lossless = wave.astype("<f4"), 1.0, True
        else:
            data, scale = _quantise(wave)
            lossless = bool(np.array_equal(_dequantise(data, scale), wave))
        code = DTYPES[self.dtype][0]
        header = HEADER.pack(MAGIC, STORE_VERSION, code, int(lossless), len(wave), scale)
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(header)
                handle.write(data.tobytes())
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return StoredClip(file, len(wave), lossless, scale, self.dtype)


def _quantise(wave: np.ndarray) -> tuple[np.ndarray, float]:
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    scale = INT16_STEP if peak <= 32767 * INT16_STEP else peak / 32767.0
    q = np.clip(np.rint(wave.astype(np.float64) / scale), -32768, 32767).astype("<i2")
    return q, scale


def _dequantise(q: np.ndarray, scale: float) -> np.ndarray:
    return q.astype(np.float32) * np.float32(scale)


def _read_header(file: Path) -> StoredClip | None:
    try:
        with open(file, "rb") as handle:
            raw = handle.read(HEADER.size)
        size = file.stat().st_size
    except OSError:
        return None
    if len(raw) != HEADER.size:
        return None
    magic, version, code, lossless, length, scale = HEADER.unpack(raw)
    if magic != MAGIC or version != STORE_VERSION or code not in _CODES:
        return None
    dtype = _CODES[code]
    if size != HEADER.size + length * DTYPES[dtype][1].itemsize:
        return None  # truncated or padded: written again
    return StoredClip(file, int(length), bool(lossless), float(scale), dtype)


def _samples(entry: StoredClip, start: int, stop: int | None) -> np.ndarray:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    stop = entry.length if stop is None else min(int(stop), entry.length)
    if stop <= start:
        return np.zeros(0, np.float32)
    data = np.memmap(entry.file, dtype=DTYPES[entry.dtype][1], mode="r", offset=HEADER.size, shape=(entry.length,))
    try:
        chunk = np.array(data[start:stop])  # a copy: the mapping is closed right away
    finally:
        del data
    if entry.dtype == "float32":
        return chunk.astype(np.float32, copy=False)
    return _dequantise(chunk, entry.scale)
