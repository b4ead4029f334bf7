"""A built run opened once for the app: its saved config, CLAP loaded once, the audio pool memory-mapped.

The pool is the float32 matrix retrieve maps (`sonify.retrieval.matrices.load_pool`), read-only: the
app never writes into the run folder. Chunk metadata (source, path, frames) is looked up by DuckDB for
the few rows shown, so startup does not read every chunk's row. Files the app makes (chunk clips,
mixtures, uploads Gradio stores) go to its own temporary folder, removed when it stops.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


class AppError(Exception):
    """Bad input or a run the app cannot use: one line, shown in the page (never a traceback)."""


@dataclass
class AppConf:
    """Settings of `python -m sonify.app` (each a command-line flag)."""
    max_upload_mb: float = 20.0        # uploads larger than this are refused with a message
    page_size: int = 10                # search results per page
    max_draw_inputs: int = 4           # audio inputs of the draw tab
    max_concepts: int = 8              # typed concepts per image
    draw_lufs: float = -23.0           # each draw input is normalised to this before its offset (as sonify.generate)
    draw_seconds: float = 5.0          # each draw input is cut or padded to this (as sonify.generate)
    num_images: int = 1                # images per draw
    device: str = "auto"


def check_upload(path: str | os.PathLike | None, what: str, conf: AppConf) -> Path:
    """An uploaded file that exists and is within the size limit, else an AppError naming the limit."""
    if not path:
        raise AppError(f"no {what} given")
    p = Path(path)
    if not p.is_file():
        raise AppError(f"the {what} upload {p.name} is missing (upload it again)")
    size = p.stat().st_size
    if size > conf.max_upload_mb * 1e6:
        raise AppError(f"the {what} {p.name} is {size / 1e6:.1f} MB, over the {conf.max_upload_mb:g} MB limit (--max-upload-mb)")
    return p


class TempFiles:
    """The app's own temporary folder (also Gradio's: `GRADIO_TEMP_DIR`), removed by `close`."""

    def __init__(self, root: str | None = None):
        self.dir = Path(root) if root else Path(tempfile.mkdtemp(prefix="sonify-app-"))
        self.dir.mkdir(parents=True, exist_ok=True)

    def wav(self, x: np.ndarray, rate: int, stem: str) -> str:
        """`x` as a 16-bit WAV named by its content (the same clip is written once)."""
        digest = hashlib.sha1(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()[:16]
        path = self.dir / "clips" / f"{stem}-{digest}.wav"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            sf.write(path, np.clip(x, -1.0, 1.0).astype(np.float32), rate, subtype="PCM_16")
        return str(path)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class AppRun:
    """One run, opened for the app: config, pool (mapped), CLAP (loaded once), the VLMs and the checkpoint's
    sampler loaded on first use (a machine without a GPU can skip the VLM and type concepts)."""

    def __init__(self, run_dir: str | os.PathLike, checkpoint: str | None = None, conf: AppConf | None = None,
                 temp: TempFiles | None = None, background: bool = False):
        import pyarrow.parquet as pq
        from omegaconf import OmegaConf

        from sonify.engine.store import TableStore
        from sonify.retrieval.matrices import load_matrix, load_pool, matrix_paths, pool_path
        from sonify.sources import SourcePaths

        self.run_dir, self.conf = Path(run_dir), conf or AppConf()
        cfg_path = self.run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise AppError(f"{self.run_dir} is not a run folder (no config.yaml): build it with python -m sonify.run")
        self.cfg = OmegaConf.load(cfg_path)
        self.store = TableStore(self.run_dir)
        npy, ids_path, _ = matrix_paths(self.store, "audio_embeddings")
        if not npy.is_file() or not ids_path.is_file():
            raise AppError(f"{self.run_dir} has no audio pool (matrices/audio_embeddings.npy): run stage=embed_audio first")
        if pool_path(self.store, "audio_embeddings").is_file():
            self.pool, self.chunk_ids = load_pool(self.store, "audio_embeddings")   # mapped read-only, as retrieve does
        else:   # never write the float32 copy into the run: widen the float16 matrix in memory instead
            half, _ = load_matrix(self.store, "audio_embeddings")
            self.pool = np.asarray(half, np.float32)
            self.chunk_ids = pq.read_table(ids_path, columns=["id"]).column("id").combine_chunks()
        if self.pool.shape[0] == 0:
            raise AppError(f"{self.run_dir}'s audio pool is empty: no chunk was embedded")
        r = self.cfg.stages.retrieve
        self.k, self.mode, self.temperature = max(1, min(int(r.k), self.pool.shape[0])), str(r.mode), float(r.temperature)
        self.distinct = bool(r.get("distinct_within_variant", False))
        self.seed = int(self.cfg.run.seed)
        self.chunk_seconds = float(self.cfg.stages.audio.chunk_seconds)
        self.mix = self.cfg.stages.mix
        self.paths = SourcePaths.of(self.cfg, "audio")
        self._clap, self._clap_future, self._lock = None, None, threading.Lock()
        self._con = None
        if not background:
            self._clap = self._load_clap()
        self.checkpoint = self._check_checkpoint(checkpoint) if checkpoint else None
        self._vlms: dict[str, object] = {}
        self._samplers: dict[float, object] = {}
        self._retriever = None
        self.temp = temp or TempFiles()   # last: a run refused above leaves no folder behind

    # -- CLAP ----------------------------------------------------------------------------------------
    def _load_clap(self):
        from sonify.models.clap import ClapEmbedder

        e = self.cfg.stages.embed
        clap = ClapEmbedder(self.cfg.models.clap, self.cfg.models.tiny_dir, e.device, e.dtype, int(e.model_batch),
                            int(e.text_max_tokens))
        if clap.dim != self.pool.shape[1]:
            raise AppError(f"models.clap {self.cfg.models.clap} is {clap.dim} wide but the run's pool is "
                           f"{self.pool.shape[1]} wide: the run's saved config does not match its pool")
        return clap

    def load_in_background(self) -> None:
        """Start loading CLAP (importing torch and transformers: most of the startup) in a thread, so the first
        page is served meanwhile; the first search or match waits for it."""
        from concurrent.futures import ThreadPoolExecutor

        def warm():
            clap = self._load_clap()
            clap.embed_text(["warm-up"])   # the first model call pays one-off costs: not the user's first search
            self.metadata_connection()
            return clap

        if self._clap is None and self._clap_future is None:
            self._clap_future = ThreadPoolExecutor(1, thread_name_prefix="sonify-clap").submit(warm)

    @property
    def clap(self):
        """CLAP, loaded once (here, or by `load_in_background`)."""
        if self._clap is None:
            self._clap = self._clap_future.result() if self._clap_future is not None else self._load_clap()
        return self._clap

    # -- the checkpoint ------------------------------------------------------------------------------
    def run_ast_dim(self) -> int | None:
        """The width of the run's AST features (what its shards trained on); None before the features stage."""
        if not self.store.exists("audio_features"):
            return None
        dims = self.store.connect("audio_features").sql(
            "SELECT DISTINCT dim FROM audio_features WHERE status = 'ok' AND dim IS NOT NULL").fetchall()
        return int(dims[0][0]) if dims else None

    def _check_checkpoint(self, checkpoint: str) -> str:
        from sonify.training.sampling import pipeline_description, resolve_checkpoint

        try:
            ckpt = resolve_checkpoint(Path(checkpoint))
            train = pipeline_description(ckpt)   # the checkpoint's pipeline.json, or its run's train_config.json
        except (OSError, ValueError) as e:
            raise AppError(f"checkpoint {checkpoint} cannot be used: {e}") from None
        run_dim = self.run_ast_dim()
        if run_dim is not None and int(train["ast_dim"]) != run_dim:
            raise AppError(f"checkpoint {checkpoint} conditions on AST features {train['ast_dim']} wide, but the run's "
                           f"features ({self.cfg.models.ast}) are {run_dim} wide: give a checkpoint trained on this run")
        return str(ckpt)

    def sampler(self, seconds: float):
        """The checkpoint's sampler for clips of `seconds`, loaded once per clip length."""
        from sonify.training.sampling import Sampler

        if self.checkpoint is None:
            raise AppError("no checkpoint: start the app with checkpoint=<the DiT training output or a checkpoint-N>")
        key = round(seconds, 3)
        if key not in self._samplers:
            self._samplers[key] = Sampler(self.checkpoint, seconds, device=self.conf.device)
        return self._samplers[key]

    # -- the VLMs ------------------------------------------------------------------------------------
    @property
    def vlm_names(self) -> list[str]:
        return [str(v) for v in self.cfg.models.vlms]

    def vlm(self, name: str):
        from sonify.models.vlm import load_vlm

        if name not in self.vlm_names:
            raise AppError(f"VLM {name!r} is not one of the run's models.vlms ({', '.join(self.vlm_names) or 'none'})")
        if name not in self._vlms:
            c = self.cfg.stages.concepts
            self._vlms[name] = load_vlm(name, c.backend, self.cfg.models.tiny_dir, c.device, c.dtype,
                                        bool(self.cfg.models.trust_remote_code), int(c.model_batch))
        return self._vlms[name]

    # -- the pool ------------------------------------------------------------------------------------
    def retriever(self):
        """Algorithm 1's top-k over the mapped pool (the retrieve stage's `BlockedRetriever`), built once."""
        if self._retriever is None:
            from sonify.retrieval.algorithm import BlockedRetriever

            r = self.cfg.stages.retrieve
            self._retriever = BlockedRetriever(self.pool, self.k, str(r.device), int(r.block_mb) << 20)
        return self._retriever

    def text_queries(self, texts: list[str]) -> np.ndarray:
        """CLAP text embeddings, L2-normalised as the embed stage stores them (float16-rounded, as the concept
        matrix retrieve reads), float32."""
        from sonify.models.clap import normalise

        unit, norms, ok = normalise(self.clap.embed_text(texts))
        if not ok.all():
            bad = [t for t, good in zip(texts, ok) if not good]
            raise AppError(f"CLAP gave no usable embedding for {bad!r}")
        return unit.astype(np.float16).astype(np.float32)

    def chunk_rows(self, rows: list[int]) -> list[dict]:
        """Metadata of pool rows (in the order given): chunk id, source, uri, frames."""
        ids = [self.chunk_ids[int(r)].as_py() for r in rows]
        return self.chunk_info(ids)

    def metadata_connection(self):
        """One DuckDB connection over audio_chunks for the app's life (opening one costs more
        than a page's query)."""
        with self._lock:
            if self._con is None:
                self._con = self.store.connect("audio_chunks")
            return self._con

    def chunk_info(self, ids: list[str]) -> list[dict]:
        import pyarrow as pa

        if not ids:
            return []
        want = pa.table({"id": pa.array(ids, pa.string())})
        con = self.metadata_connection()
        with self._lock:
            con.register("want", want)
            found = {r[0]: r for r in con.sql("""
                SELECT c.id, c.source, c.uri, c.start_frame, c.num_frames, c."offset", c.duration
                FROM want w JOIN audio_chunks c ON c.id = w.id""").fetchall()}
            con.unregister("want")
        out = []
        for i in ids:
            if i not in found:
                raise AppError(f"chunk {i!r} is not in this run's audio_chunks")
            _, source, uri, start, n, offset, duration = found[i]
            out.append({"chunk_id": i, "source": source, "uri": uri, "start_frame": int(start),
                        "num_frames": int(n), "offset": float(offset), "duration": float(duration)})
        return out

    def chunk_audio(self, info: dict, rate: int) -> np.ndarray:
        """A chunk decoded from its source as the mix stage decodes it (mono, `rate`, padded to the chunk length)."""
        from sonify.media.audio import load_chunk

        try:
            return load_chunk(self.paths.resolve(info["source"], info["uri"]), info["start_frame"], info["num_frames"],
                              rate, self.chunk_seconds)
        except Exception as e:
            raise AppError(f"chunk {info['chunk_id']} cannot be decoded from {info['uri']}: {type(e).__name__}: {e}") from None

    def chunk_wav(self, info: dict, rate: int = 16000) -> str:
        return self.temp.wav(self.chunk_audio(info, rate), rate, "chunk")

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
        self.temp.close()
