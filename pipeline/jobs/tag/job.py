"""Batch tagging of video archives: resumable, fault-isolated, and searchable afterwards.

    discover -> windows (``pipeline.features.windows``: chunks decoded in supervised workers, encoded here in batches across
    videos, pooled per window) -> commit a part to the index -> ... -> score labels and write OUT, OUT.segments.*,
    OUT.errors.* (streamed from the index)

Every video is decoded once into sliding windows (``window_s`` seconds every ``stride_s``, ``num_frames`` frames
each). A window's state (``model.video_text``) is its pooled frames, or X-CLIP's encoding of the window with its tokens; a
video's is the mean of its windows' (vectors renormalised). Labels are scored zero-shot against both with the model's
own scoring (softmax, or SigLIP's sigmoid per label), and adjacent windows with the same top label merge into action
segments.

Resume. Every ``commit_every`` videos the part is committed to the index (``index.TagIndex``: atomic, so a kill at
any moment loses at most the part under way). A rerun skips every path stored with its current size and
modification time (failures too, unless ``retry_failed``); a changed file is tagged again and its old rows are
deleted in the same commit. The final files
are written from the index, one row set per video: none lost, none twice. ``retag`` writes them for other labels
through the same code, without decoding; ``search`` (``query``) ranks the stored videos and windows for a text.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from clip_model.config import PreprocessConfig
from clip_model.errors import UserError
from configs.schema import changed_settings
from pipeline.features.encoders import RayEncoders, auto_precision_on_gpu
from pipeline.features.frame_geometry import PRESCALE, decode_cap
from pipeline.features.windows import FrameGeometry, StageCounts, WindowTask, embed_windows
from pipeline.jobs.progress import progress as progress_bar
from pipeline.model.loading import load_model, model_identity
from pipeline.model.runtime import Precision, ProtocolOverrides, WindowLabels, check_frame_choice, resolve_device
from pipeline.model.video_text import VideoTextModel
from pipeline.video import ENGINES, Engine
from pipeline.video.ray_pool import connect, import_ray
from pipeline.video.reader import VideoDecodeError, check_file
from pipeline.video.samplers import FrameChoice
from pipeline.video.supervisor import Failure

from ..distributed import barrier, init_distributed
from .discover import LISTING_FAILURE, discover, file_stamp
from .index import TagIndex, open_indexes
from .index_state import VIDEO_COLUMNS, embedding_schema, file_name, index_folder
from .outputs import TopLabels, check_output, output_lock, top_labels, write_outputs
from .part import Part, next_video_id
from .table_indexes import build_indexes


@dataclass(frozen=True)
class TagSettings(WindowLabels):
    """runtime, labels, overrides, window_s, stride_s, topk (``WindowLabels``), then tag's own."""

    max_rss_mb: float = 2048.0  # a decode worker above this is replaced after its task
    chunk_mb: float = 32.0  # decoded frames a worker holds at once: bounds memory on hour-long videos
    commit_every: int = 32  # videos per committed part
    above: float | None = None  # also list every label whose probability reaches this (multi-label tags)
    engine: Engine = "local"  # decode workers: local processes, or Ray tasks (pipeline.video.ray_pool); same rows
    ray_address: str | None = None  # engine ray: the cluster to join; None starts a local one on 127.0.0.1
    sampling: FrameChoice = "exact"  # keyframes: each window's frames are the keyframes nearest its instants
    encoders: int | None = None  # engine ray: model actors (None: one per cluster GPU, none without; 0: the driver)
    auto_precision: bool = False  # the precision is auto's for this machine: GPU encoder actors resolve it again

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.above is not None and not 0 < self.above < 1:
            raise UserError(f"above ({self.above}) must lie in (0, 1)")
        if self.commit_every < 1:
            raise UserError(f"commit_every ({self.commit_every}) must be >= 1")
        if self.engine not in ENGINES:
            raise UserError(f"engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if (self.ray_address or self.encoders is not None) and self.engine != "ray":
            raise UserError(f"{'a Ray address' if self.ray_address else '--encoders'} needs --engine ray")
        if self.encoders is not None and self.encoders < 0:
            raise UserError(f"encoders ({self.encoders}) must be >= 0")
        if self.ray_address and self.ray_address.startswith("ray://"):
            raise UserError(f"--ray-address {self.ray_address}: Ray Client (ray://) cannot stream tasks' results; "
                            "give the cluster's GCS address (host:6379) and run tag on a machine of the cluster")
        check_frame_choice(self.sampling)
        if self.chunk_mb <= 0:
            raise UserError(f"chunk_mb ({self.chunk_mb}) must be > 0")

    def resolved(self, model: VideoTextModel) -> TagSettings:
        """The settings with the model's defaults filled in (templates, frames per window), checked against it."""
        asked = self.overrides
        return dataclasses.replace(self, overrides=ProtocolOverrides(
            asked.templates or model.templates, model.num_frames(asked.num_frames), model.pooling))

    def identity(self) -> dict:
        """What the stored rows depend on: a resume must match it (the model by its weights' key)."""
        protocol = self.overrides
        return {"model": model_identity(self.runtime.model, self.runtime.precision), "labels": list(self.labels),
                "templates": protocol.templates if isinstance(protocol.templates, str | None) else
                list(protocol.templates), "pooling": protocol.pooling, "num_frames": protocol.num_frames,
                "window_s": self.window_s, "stride_s": self.stride_s, "topk": self.topk,
                "decode_prescale": PRESCALE,  # tag always pre-scales large frames (frame_geometry.decode_cap)
                "sampling": self.sampling}

    def task(self, path: str, preprocess: PreprocessConfig) -> WindowTask:
        """One video's decode task; the decoder caps the short side at twice the model's input, as classify does,
        and a long video is split across as many time ranges as there are decode workers."""
        assert self.overrides.num_frames is not None, "resolved() first"
        return WindowTask(path, FrameGeometry.of(preprocess), self.overrides.num_frames, self.window_s, self.stride_s,
                          self.runtime.backend, decode_cap(preprocess, prescale=True), self.chunk_mb,
                          split=self.runtime.decode_workers, frame_choice=self.sampling)


@dataclass
class TagSummary:
    total: int
    skipped: int  # already tagged (unchanged) in an earlier run
    ok: int
    failed: dict  # status -> count
    seconds: float
    out: Path
    forgotten: int = 0  # stored files gone from disk whose rows were deleted (forget_missing)
    failed_earlier: int = 0  # of the skipped, those stored as failures
    counts: StageCounts = dataclasses.field(default_factory=StageCounts)  # frames decoded and encoded, encoders

    def line(self) -> str:
        rate = (self.ok + sum(self.failed.values())) / self.seconds if self.seconds else 0.0
        failed = ", ".join(f"{n} {s}" for s, n in sorted(self.failed.items())) or "none"
        forgotten = f", {self.forgotten} gone from disk forgotten" if self.forgotten else ""
        earlier = (f" ({self.failed_earlier} of them failed: --retry-failed tries them again)"
                   if self.failed_earlier else "")
        return (f"{self.total} videos: {self.ok} tagged, {self.skipped} already done{earlier}{forgotten}, "
                f"failed: {failed}; "
                f"{rate:.2f} videos/s; rows in {self.out}")


def shard_of(path: str, world: int) -> int:
    """The rank of ``world`` that tags ``path``: from a hash of the path alone, so that files added to or deleted from
    the archive move no other file to another rank (its rows would then be in two indexes)."""
    return zlib.crc32(os.fsencode(path)) % world


SHARD_OF = "crc32(path) % world"  # recorded in a sharded index's settings: an index sharded otherwise is refused


# what an index written before a setting was recorded ran with: it resumes as if it had recorded it
SETTINGS_BEFORE_RECORDED = {"decode_prescale": PRESCALE, "sampling": "exact"}


def open_for_tagging(folder: Path, identity: dict, dim: int, restart: bool = False) -> TagIndex:
    """The index to resume, or a new one (``restart``: the folder's is discarded); a resume whose settings changed is
    refused, naming them."""
    index = TagIndex.open_writer(folder, identity, dim, restart)
    if changed := changed_settings(SETTINGS_BEFORE_RECORDED | index.state.settings, identity):
        index.close()
        raise UserError(f"{folder}: cannot resume, settings changed since it was written: {'; '.join(changed)}; "
                         "use another --out, or --restart to discard the index and start over")
    return index


def resume_plan(index: TagIndex, paths: Sequence[Path], listing_errors: Sequence[dict], retry_failed: bool = False,
                ) -> tuple[list[Path], set[str]]:
    """The paths to tag now (new, changed since they were stored, or with ``retry_failed`` stored as failures), and
    the stored paths whose rows the coming commits replace (those files, and folders that could not be listed
    again). A listed file that is gone is an error row until it appears, unless it is stored as tagged: then its
    rows stay as they are (an unmounted drive must not wipe its embeddings; ``forget_missing`` deletes them)."""
    stored = index.stamps()
    failures = index.paths("status != 'ok'")

    def wanted(p: Path) -> bool:
        if str(p) not in stored:
            return True
        stamp = file_stamp(p)
        if stamp is None:  # gone: a stored failure stays one (tried again: no decode), stored rows stay
            return str(p) in failures and (retry_failed or stored[str(p)] != (None, None))
        return stored[str(p)] != stamp or (retry_failed and str(p) in failures)

    todo = [p for p in paths if wanted(p)]
    retagged = {str(p) for p in todo if str(p) in stored} | {e["path"] for e in listing_errors if e["path"] in stored}
    return todo, retagged


def forget_missing_files(index: TagIndex) -> int:
    """Delete the rows of every stored file that no longer exists (whatever the listing; a folder that could not be
    listed stays); returns how many were forgotten."""
    gone = [path for path in index.stamps() if not os.path.lexists(path)]
    delete_rows(index, gone)
    return len(gone)


def delete_rows(index: TagIndex, paths: Sequence[str]) -> None:
    """Delete every row of ``paths``, in commits of ``DELETE_BATCH`` paths."""
    videos = VIDEO_COLUMNS.empty_table()
    embeddings = embedding_schema(index.state.dim, index.token_count()).empty_table()
    for start in range(0, len(paths), DELETE_BATCH):
        index.commit(videos, embeddings, replace=paths[start : start + DELETE_BATCH])


DELETE_BATCH = 1000  # paths per deleting commit: the delete's SQL names each one


def _tag_into(index: TagIndex, settings: TagSettings, paths: Sequence[Path], listing_errors: Sequence[dict],
              model: VideoTextModel, scorer: TopLabels, shard: tuple[int, int], progress: bool, retry_failed: bool,
              counts: StageCounts) -> tuple[int, int, dict[str, int], int]:
    """Tag what the index lacks of ``paths`` (and what failed, with ``retry_failed``), committing every
    ``commit_every`` videos; returns (videos to do, ok, failures by status, skipped videos stored as failures)."""
    (rank, world), rt = shard, settings.runtime
    unlisted = index.paths(f"reason LIKE '{LISTING_FAILURE}:%'") - {e["path"] for e in listing_errors}
    delete_rows(index, sorted(unlisted))  # folders listed again this time: their error rows go
    todo, retagged = resume_plan(index, paths, listing_errors, retry_failed)
    skipped = {str(p) for p in paths} - {str(p) for p in todo}
    failed_earlier = len(skipped & index.paths("status != 'ok'")) if skipped else 0

    part = Part(scorer, model.embed_dim, model.token_count)

    def video_id() -> int:
        return next_video_id(index, part, rank, world)

    for e in listing_errors:  # folders that cannot be listed: re-listed (and replaced) every run
        part.add_failure(video_id(), e["path"], None, Failure(e["status"], e["stage"], e["reason"]))

    def commit() -> None:
        if len(part):
            names = [file_name(v["path"]) for v in part.videos]
            index.commit(*part.tables(), replace=[name for name in names if name in retagged])
            part.clear()

    failed: dict[str, int] = {}
    ok = 0
    tasks, stamps = [], {}
    for p in todo:  # what is no video file at all (gone, a link to nothing, a FIFO, empty) fails without a worker
        try:
            check_file(p)
        except VideoDecodeError as e:
            part.add_failure(video_id(), str(p), file_stamp(p), Failure("error", "open", e.reason))
            failed["error"] = failed.get("error", 0) + 1
        else:
            tasks.append(settings.task(str(p), model.preprocess))
            stamps[str(p)] = file_stamp(p)  # before decoding: a file still being written is tagged again later
    encoder, slots = ray_encoders(settings, counts) if tasks and settings.engine == "ray" else (None, None)
    bar = progress_bar(len(tasks), desc="tag", unit="video", enabled=progress)
    started = time.monotonic()  # counts: the decode and encode stages' rates, beside the bar's
    stream = embed_windows(tasks, model, batch_size=rt.batch_size, decode_workers=rt.decode_workers,
                           timeout_s=rt.decode_timeout_s, max_rss_mb=settings.max_rss_mb,
                           engine=settings.engine, counts=counts, encoder=encoder, ray_slots=slots) if tasks else iter(())
    # (nothing left to do: no worker process is started)
    try:
        for task, video, failure in stream:
            stamp = stamps[task.path]
            if video is None:
                assert failure is not None  # embed_windows sets exactly one of video and failure
                part.add_failure(video_id(), task.path, stamp, failure)
                failed[failure.status] = failed.get(failure.status, 0) + 1
            else:
                part.add_video(video_id(), task.path, stamp, video)
                ok += 1
            seconds = max(time.monotonic() - started, 1e-9)
            bar.set_postfix(refresh=False, decoded=f"{counts.decoded_frames / seconds:.0f} frames/s",
                            encoded=f"{counts.encoded_frames / seconds:.0f} frames/s")
            bar.update()
            if len(part) >= settings.commit_every:
                commit()
    finally:
        getattr(stream, "close", lambda: None)()  # its decode workers stop now, on an exception too
        if encoder is not None:
            encoder.close()
        bar.close()
    commit()
    build_indexes(index)
    return len(todo), ok, failed, failed_earlier


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during ``tag``: what was committed stays, and a rerun resumes from it."""

    def __init__(self, committed: int):
        super().__init__(f"interrupted: {committed} videos committed; rerun the same command to resume")
        self.committed = committed


def tag(settings: TagSettings, source: str | Path, out: str | Path, *, include: Sequence[str] = (),
        exclude: Sequence[str] = (), retry_failed: bool = False, forget_missing: bool = False, restart: bool = False,
        progress: bool = True) -> TagSummary:
    """Tag every video of ``source`` (folder or manifest) into ``out`` and its siblings; resumable (see module doc).
    A rerun skips the files stored unchanged, failures included, unless ``retry_failed`` (a timeout or crash may
    not recur, say with a longer ``decode_timeout_s``): their rows are then replaced. Rows of files deleted since
    stay, unless ``forget_missing`` (``forget_missing_files``); ``restart`` discards the index and starts over.

    The index's lock and the outputs' are taken before any work and held until the outputs are written, so a second
    writer of either is refused at once."""
    start = time.perf_counter()
    rt = settings.runtime
    out = Path(out).expanduser().resolve()
    rank, world, device = init_distributed(resolve_device(rt.device))
    if world > 1 and settings.engine == "ray":
        raise UserError("--engine ray spreads the decoding over a Ray cluster from one process: run it without torchrun")
    folder = index_folder(out) if world == 1 else index_folder(out) / f"rank-{rank:03d}-of-{world:03d}"
    check_output(out, index_folder(out))
    paths, listing_errors = discover(source, include, exclude)
    if world > 1:  # every rank lists the same paths and takes its own (shard_of), listing errors are rank 0's
        paths, listing_errors = [p for p in paths if shard_of(str(p), world) == rank], listing_errors if rank == 0 else []
    with output_lock(out) if rank == 0 else nullcontext(), ray_connection(settings):
        if settings.engine == "ray" and settings.auto_precision:
            settings = precision_on_encoders(settings)
            rt = settings.runtime
        model = load_model(rt.model, device, rt.precision, settings.overrides.pooling, settings.overrides.num_frames)
        settings = settings.resolved(model)
        templates = settings.overrides.templates
        assert templates is not None
        identity = settings.identity() | ({"shard": [rank, world], "shard_of": SHARD_OF} if world > 1 else {})
        scorer = top_labels(model, settings.labels, templates, settings.topk, settings.above)
        index = open_for_tagging(folder, identity, model.embed_dim, restart)
        committed = index.state.rows.get("videos", 0)
        try:
            forgotten = forget_missing_files(index) if forget_missing else 0
            counts = StageCounts()
            todo, ok, failed, failed_earlier = _tag_into(index, settings, paths, listing_errors, model, scorer,
                                                         (rank, world), progress, retry_failed, counts)
            barrier(world)
            if rank == 0:  # every rank's index into one set of outputs, under this rank's lock
                write_outputs(open_indexes(index_folder(out)), out, scorer, settings.topk)
        except KeyboardInterrupt:
            raise Interrupted(index.state.rows.get("videos", committed) - committed) from None
        except OSError as e:
            raise disk_error(e, out) from None
        finally:
            index.close()
    barrier(world)
    return TagSummary(len(paths), len(paths) - todo, ok, failed, time.perf_counter() - start, out, forgotten,
                      failed_earlier, counts)


@contextmanager
def ray_connection(settings: TagSettings) -> Iterator[None]:
    """Connected to the Ray cluster while tagging (engine ray); a cluster this job started goes with it."""
    connected = settings.engine == "ray" and connect(settings.ray_address)
    try:
        yield
    finally:
        if connected:
            import_ray().shutdown()


def encoder_plan(settings: TagSettings) -> tuple[int, int, int]:
    """(encoder actors ``settings.encoders`` asks for, whole GPUs, CPUs) on the connected Ray cluster's live nodes:
    None asks one per whole GPU (an actor takes one), so none where there is none: the driver encodes."""
    nodes = [n["Resources"] for n in import_ray().nodes() if n.get("Alive")]
    gpus, cpus = sum(int(r.get("GPU", 0)) for r in nodes), sum(int(r.get("CPU", 0)) for r in nodes)
    return (gpus if settings.encoders is None else settings.encoders), gpus, cpus


def precision_on_encoders(settings: TagSettings) -> TagSettings:
    """``--precision auto`` where the encoders will be GPU actors: resolved on one of the cluster's GPUs (bf16 or
    fp16), not on this machine, and said on stderr; otherwise the settings as they are."""
    count, gpus, _ = encoder_plan(settings)
    if not count or not gpus:
        return settings
    precision, why = auto_precision_on_gpu()
    print(f"precision: {precision} ({why}, on a GPU node of the Ray cluster, where the encoders run)", file=sys.stderr)
    runtime = dataclasses.replace(settings.runtime, precision=cast(Precision, precision))
    return dataclasses.replace(settings, runtime=runtime)


def ray_encoders(settings: TagSettings, counts: StageCounts) -> tuple[RayEncoders | None, int | None]:
    """The model actors ``settings.encoders`` asks for on the connected cluster (``encoder_plan``), each on one GPU
    where the cluster has whole GPUs, else on one CPU, leaving at least one CPU to decode, and the decode tasks to
    run beside them (the CPUs they leave; None: the cluster's); their placements (node id, device) go into
    ``counts``. (None, None): the driver encodes."""
    count, gpus, cpus = encoder_plan(settings)
    if not count:
        return None, None
    room = gpus if gpus else cpus - 1
    if count > room:
        raise UserError(f"--encoders {count}: the Ray cluster has room for {room} (one per whole GPU of its nodes; "
                        f"without GPUs one per CPU, less one CPU for the decode tasks; it has {cpus} CPUs)")
    asked = settings.overrides
    encoders = RayEncoders(settings.runtime.model, settings.runtime.precision, asked.pooling, asked.num_frames,
                           count=count, gpus=gpus > 0)
    try:
        counts.encoders = tuple(encoders.placements())
    except BaseException:
        encoders.close()
        raise
    return encoders, max(1, cpus - encoders.cpus_held)


def disk_error(e: OSError, out: Path) -> Exception:
    """A full or read-only disk under ``out`` as one line (committed work is kept); any other OSError as it is."""
    text = f"{e.strerror or ''} {e}".lower()
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text or "quota exceeded" in text:
        return UserError(f"{out}: no space left on device; committed work is kept")
    if e.errno == errno.EROFS or "read-only file system" in text:
        return UserError(f"{out}: read-only file system; committed work is kept")
    return e
