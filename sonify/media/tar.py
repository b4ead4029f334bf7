"""A minimal streaming tar writer: byte-identical to `tarfile` in USTAR format, without its overhead.

`tarfile.addfile` copies each TarInfo and streams data through `copyfileobj`; for shards of
thousands of small members that overhead is a third of the time. This writes the same header
(`TarInfo.tobuf`), the data, the padding to 512 bytes, and on close the two zero blocks and the
padding to a whole record, exactly as `tarfile.TarFile.close` does (tested).
"""

from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE        # 512
RECORD = tarfile.RECORDSIZE      # 20 * 512


class TarStream:
    def __init__(self, fileobj):
        self.f = fileobj
        self.offset = 0

    def add(self, name: str, data: bytes | memoryview, mtime: int = 0, mode: int = 0o644) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, mode
        header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
        pad = (-len(data)) % BLOCK
        self.f.write(header)
        self.f.write(data)
        if pad:
            self.f.write(b"\0" * pad)
        self.offset += len(header) + len(data) + pad
        return len(data)

    def close(self) -> None:
        self.f.write(b"\0" * (2 * BLOCK))
        self.offset += 2 * BLOCK
        remainder = self.offset % RECORD
        if remainder:
            self.f.write(b"\0" * (RECORD - remainder))
