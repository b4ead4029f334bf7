"""Stage `audio`: probe each file, decode it once in chunk-sized blocks, and cut 5 s mono chunks.

Chunks point into the source file (start frame, frame count at the native rate); nothing is
resampled or copied here. Decoding the whole file catches truncation and measures each chunk's
peak and RMS, so digitally silent chunks become error rows instead of retrieval candidates. A file
whose decoded frames fall short of what its container declares (WAV's RIFF data size, FLAC's
STREAMINFO) is `truncated`; one whose channels are audible but cancel in the downmix (L = -R) is
`channels_cancel`, not `silent`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
import pyarrow as pa
import soundfile as sf

from sonify.engine.ids import chunk_id
from sonify.engine.errors import error_text
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.store import rows_to_table
from sonify.engine.settings import POSITIVE, StageSettings, ranged
from sonify.media import AUDIO_EXTENSIONS
from sonify.media.audio import chunk_frames_at, dbfs, declared_frames, iter_blocks, to_mono
from sonify.sources import file_problem
from sonify.sources.audio import list_audio
from sonify.stages.listing import ListingStage


@dataclass
class AudioSettings(StageSettings):
    chunk_seconds: float = ranged(5.0, POSITIVE)   # the paper's chunk length (A.7)
    silence_dbfs: float = -90.0        # chunks whose peak is below this are error rows 'silent'
    extensions: List[str] = field(default_factory=lambda: list(AUDIO_EXTENSIONS))


def _silence_reason(mono_peak: float, channel_peak: float, silence_dbfs: float, where: str) -> str:
    """'silent', or 'channels_cancel' when a channel is audible but the downmix is not (antiphase)."""
    if dbfs(channel_peak) >= silence_dbfs:
        return error_text("channels_cancel", f"{where}: channels peak at {dbfs(channel_peak):.1f} dBFS but their "
                                             f"mono downmix at {dbfs(mono_peak):.1f} dBFS (antiphase)")
    return error_text("silent", f"{where} peak {dbfs(mono_peak):.1f} dBFS < {silence_dbfs}")


class AudioStage(ListingStage):
    name = "audio"
    Settings = AudioSettings
    version = 3                         # 2: truncated (container header) and channels_cancel reasons; 3: chunks' pcm_sha256
    outputs = ("audio_files", "audio_chunks")
    expected_errors = frozenset({"silent"})
    lister = staticmethod(list_audio)

    def _file(self, row: dict) -> tuple[dict, list[dict]]:
        out = {k: row[k] for k in ("id", "source", "uri", "labels")}

        def fail(reason, detail):
            return {**out, "status": STATUS_ERROR, "error": error_text(reason, detail)}, []

        if row["list_error"]:
            return {**out, "status": STATUS_ERROR, "error": row["list_error"]}, []
        try:
            path = self.paths.locate(row)
        except FileNotFoundError as e:
            return fail("not_found", e)
        if problem := file_problem(path):  # a FIFO would block the decoder forever; a folder is no file
            return {**out, "status": STATUS_ERROR, "error": problem}, []
        try:
            out["nbytes"] = os.path.getsize(path)
        except OSError as e:
            return fail("not_found", e)
        if out["nbytes"] == 0:
            return fail("empty", "zero bytes")
        try:
            info = sf.info(path)
        except Exception as e:
            return fail("corrupt", f"{type(e).__name__}: {e}")
        sr = int(info.samplerate)
        out.update(format=info.format, sample_rate=sr, channels=info.channels)
        if sr <= 0 or info.channels <= 0:
            return fail("corrupt", f"sample rate {sr}, channels {info.channels}")
        chunk_frames = chunk_frames_at(sr, self.conf.chunk_seconds)
        chunks, total, peak, channel_peak = [], 0, 0.0, 0.0
        silence = self.conf.silence_dbfs
        try:
            for i, block in enumerate(iter_blocks(path, chunk_frames)):
                n = block.shape[0]
                mono = to_mono(block)
                bpeak = float(np.max(np.abs(mono))) if n else 0.0
                cpeak = float(np.max(np.abs(block))) if n else 0.0   # the loudest single channel
                rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64)))) if n else 0.0
                if not (np.isfinite(bpeak) and np.isfinite(cpeak)):
                    return fail("corrupt", f"non-finite samples in chunk {i}")
                peak, channel_peak = max(peak, bpeak), max(channel_peak, cpeak)
                chunk = {"id": chunk_id(row["id"], i), "file_id": row["id"], "source": row["source"], "uri": row["uri"],
                         "chunk_index": i, "sample_rate": sr, "start_frame": total, "num_frames": n,
                         "offset": total / sr, "duration": n / sr, "padding": (chunk_frames - n) / sr,
                         "peak_dbfs": dbfs(bpeak), "rms_dbfs": dbfs(rms), "status": STATUS_OK, "error": None,
                         "pcm_sha256": hashlib.sha256(np.ascontiguousarray(block, "<f4").tobytes()).hexdigest()}
                if dbfs(bpeak) < silence:
                    chunk.update(status=STATUS_ERROR, error=_silence_reason(bpeak, cpeak, silence, "chunk"))
                chunks.append(chunk)
                total += n
        except Exception as e:
            declared, header = declared_frames(path)
            if declared is not None and total < declared:   # the header promises frames the data does not hold
                return fail("truncated", f"decoded {total} of the {declared} frames its {header} declares, "
                                         f"then {type(e).__name__}: {e}")
            reason = "truncated" if total else "corrupt"
            return fail(reason, f"decode failed after {total} frames: {type(e).__name__}: {e}")
        declared, header = declared_frames(path)
        if declared is not None and total < declared:
            return fail("truncated", f"decoded {total} of the {declared} frames its {header} declares "
                                     f"({total / sr:.2f} s of {declared / sr:.2f} s)")
        if total == 0:
            return fail("empty", "no audio frames")
        out.update(frames=total, duration=total / sr, peak_dbfs=dbfs(peak), num_chunks=len(chunks))
        if dbfs(peak) < silence:
            return {**out, "status": STATUS_ERROR, "error": _silence_reason(peak, channel_peak, silence, "whole file")}, chunks
        return {**out, "status": STATUS_OK, "error": None}, chunks

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        files, chunks = [], []
        for row in batch.to_pylist():
            f, c = self._file(row)
            files.append(f)
            chunks.extend(c)
        return {"audio_files": rows_to_table("audio_files", files), "audio_chunks": rows_to_table("audio_chunks", chunks)}
