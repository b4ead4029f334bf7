"""Sources for the Section 4.5 studies: chunks of a built run's pool, drawn at random or by a text query,
rendered at the mix stage's loudness rule, and images generated from them with a checkpoint.

A query is embedded by the run's CLAP text tower, as the embed stage embeds a concept, and matched by
Algorithm 1 over the whole pool (`retrieval.algorithm`, the retrieve stage's code, with the run's k).
The paper separates real mixtures into their sources first (4.5); pool isolates stand in for that here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonify.engine.keys import keyed_rng
from sonify.mixing.render import uniform_target
from sonify.studies.common import StudyError


@dataclass
class Source:
    chunk_id: str
    query: str | None          # None: drawn at random
    cosine: float | None       # CLAP cosine of query and chunk
    threshold: float | None    # Algorithm 1's lb
    n_eligible: int | None
    fallback: str | None = None  # Algorithm 1's: nothing strictly above its threshold (e.g. ties_at_max)


class RunPool:
    """A built run's audio pool: its embedding matrix and ids, its chunks' locations, its config."""

    def __init__(self, run_dir: str | Path):
        from omegaconf import OmegaConf

        from sonify.engine.store import TableStore
        from sonify.retrieval.matrices import load_pool

        self.run_dir = Path(run_dir)
        saved = self.run_dir / "config.yaml"
        if not saved.is_file():
            raise StudyError(f"{saved} is missing: run=<dir> must be a run built by sonify.run")
        self.cfg = OmegaConf.load(saved)
        self.store = TableStore(self.run_dir)
        try:
            self.matrix, ids = load_pool(self.store, "audio_embeddings")
        except FileNotFoundError as e:
            raise StudyError(f"{self.run_dir} has no audio pool ({e})") from None
        self.ids = ids.to_pylist()
        if not self.ids:
            raise StudyError(f"{self.run_dir}: the audio pool is empty")
        chunks = self.store.read("audio_chunks", ["id", "source", "uri", "start_frame", "num_frames", "status"]).to_pylist()
        self.chunks = {r["id"]: r for r in chunks if r["status"] == "ok"}
        self.chunk_seconds = float(self.cfg.stages.audio.chunk_seconds)
        self.mix = self.cfg.stages.mix
        self._clap = None
        self._paths = None

    def query_vector(self, text: str) -> np.ndarray:
        from sonify.models.clap import ClapEmbedder, normalise

        if self._clap is None:
            self._clap = ClapEmbedder(self.cfg.models.clap, self.cfg.models.tiny_dir, "cpu", "float32")
        unit, _, ok = normalise(self._clap.embed_text([text]))
        if not ok[0]:
            raise StudyError(f"the CLAP text embedding of {text!r} is not usable (zero or NaN)")
        return unit[0]

    def draw(self, n: int, queries: list[str], seed: int, trial: int) -> list[Source]:
        """N sources: one per query by Algorithm 1 (each query's choice keyed by (seed, trial, i, query)), or with
        no query N distinct chunks uniformly at random (keyed by (seed, trial))."""
        from sonify.retrieval.algorithm import BlockedRetriever, choose

        if queries:
            if len(queries) != n:
                raise StudyError(f"{len(queries)} queries for {n} sources: give one --query per source, or none")
            if not all(t.strip() for t in queries):
                raise StudyError("an empty --query: give a text for each source")
            k = int(self.cfg.stages.retrieve.k)
            retriever = BlockedRetriever(self.matrix, k, "cpu")
            q = np.stack([self.query_vector(t) for t in queries]).astype(np.float32)
            out = []
            for i, (text, (vals, idx, ties)) in enumerate(zip(queries, retriever.topk(q, True))):
                m = choose(vals, idx, "ssr", keyed_rng(seed, "experiments", trial, i, text), ties_at_max=ties)
                out.append(Source(self.ids[m.chunk], text, m.cosine, m.threshold, m.n_eligible, m.fallback))
            return out
        if n > len(self.ids):
            raise StudyError(f"{n} sources asked for, the pool holds {len(self.ids)} chunks")
        rows = keyed_rng(seed, "experiments", trial, "random").choice(len(self.ids), size=n, replace=False)
        return [Source(self.ids[int(r)], None, None, None, None) for r in rows]

    def audio(self, chunk_id: str, rate: int) -> np.ndarray:
        """The chunk as the mix stage decodes it: mono at `rate`, zero-padded to the chunk length."""
        from sonify.media.audio import load_chunk
        from sonify.sources import SourcePaths

        if self._paths is None:
            self._paths = SourcePaths(self.cfg.sources.audio, "audio")
        c = self.chunks.get(chunk_id)
        if c is None:
            raise StudyError(f"chunk {chunk_id} is not an ok row of audio_chunks")
        return load_chunk(self._paths.resolve(c["source"], c["uri"]), c["start_frame"], c["num_frames"], rate,
                          self.chunk_seconds).astype(np.float64)

    def target_lufs(self, seed: int, trial: int, i: int) -> float:
        """The mix stage's rule: a target drawn uniformly from [lufs_min, lufs_max], keyed."""
        return uniform_target(float(self.mix.lufs_min), float(self.mix.lufs_max), seed, "experiments", trial, i, "lufs")


def measure(meter, x: np.ndarray, what: str) -> float:
    value = meter.integrated(x)
    if not np.isfinite(value):
        raise StudyError(f"{what} is silent (below the loudness gate)")
    return float(value)


class Images:
    """A checkpoint's images for clips, cached as PNG files: every condition starts from the same latents (so
    images differ by their sound only), and a rerun reuses the images already written."""

    def __init__(self, checkpoint: str, seconds: float, num_images: int, steps: int, guidance: float, seed: int, device: str):
        self.args = (checkpoint, seconds, guidance, steps, True, device)
        self.num_images, self.seed = num_images, seed
        self._sampler = None

    @property
    def sampler(self):
        if self._sampler is None:
            from sonify.training.sampling import Sampler

            try:
                self._sampler = Sampler(*self.args)
            except FileNotFoundError as e:
                raise StudyError(f"checkpoint: {e}") from None
        return self._sampler

    def paths(self, folder: Path, stem: str) -> list[Path]:
        return [folder / f"{stem}_{j:02d}.png" for j in range(self.num_images)]

    def make(self, clip: np.ndarray, folder: Path, stem: str) -> list[str]:
        import torch

        paths = self.paths(folder, stem)
        if not all(p.is_file() for p in paths):
            folder.mkdir(parents=True, exist_ok=True)
            latents = self.sampler.initial_latents(self.num_images, torch.Generator().manual_seed(self.seed))
            for p, im in zip(paths, self.sampler.images([clip.astype(np.float32)] * self.num_images, latents)):
                tmp = p.with_suffix(".tmp.png")
                im.save(tmp)
                tmp.replace(p)
        return [str(p) for p in paths]


def default_checkpoint(run_dir: Path | None, given: str | None) -> str:
    if given:
        if not Path(given).is_dir():    # before anything is drawn, rendered or written
            raise StudyError(f"--checkpoint {given}: no such folder")
        return given
    if run_dir is not None and (Path(run_dir) / "dit").is_dir():
        return str(Path(run_dir) / "dit")
    raise StudyError("no checkpoint: pass --checkpoint DIR (a training output_dir or a checkpoint-N folder)")


def concrete_checkpoint(path: str) -> str:
    """The checkpoint-N folder a training output_dir stands for (its latest): the images cached in an experiment's
    folder are keyed by it, so training on and rerunning makes new images instead of reusing the old ones."""
    from sonify.training.sampling import resolve_checkpoint

    try:
        return str(resolve_checkpoint(Path(path)).resolve())
    except FileNotFoundError as e:
        raise StudyError(f"checkpoint: {e}") from None


def pool_study(a, run_dir: Path | None, name: str, params: dict):
    """What the pool experiments open with: the run's pool, the checkpoint, the experiment's folder (keyed by
    `params`, the checkpoint and the generation options) and its image cache."""
    from sonify.studies.common import generation_params, study_dir

    if run_dir is None:
        raise StudyError(f"{name}: run=<run dir> is required (its pool is drawn from)")
    pool = RunPool(run_dir)
    ckpt = concrete_checkpoint(default_checkpoint(run_dir, a.checkpoint))
    out = study_dir(run_dir, name, a.out, {**params, "checkpoint": ckpt, **generation_params(a)})
    return pool, ckpt, out, Images(ckpt, pool.chunk_seconds, a.num_images, a.steps, a.guidance, a.seed, a.device)
