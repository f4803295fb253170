"""Where a batch of frames is encoded: in this process (``LocalEncoder``), or by a pool of Ray actors that each hold
the model (``RayEncoders``: on the cluster's GPUs where it has them), with one batch function for both.

    CrossVideoBatcher (clip_features)  --submit(pieces)-->  encoder  --result(handle)-->  each owner's rows, or its Failure

A batch is a list of owners' uint8 frames (n_i, 3, S, S); its result is, per owner, its ``VideoTextModel.encode``
rows or its own ``Failure``: one model call for the whole batch, rerun owner by owner where that call fails, so
one owner's model error is its alone (``encode_batch``). An actor's pool hands results back in the order the
batches were submitted, as the local encoder does, so the batcher assembles the same rows either way.

An actor lost with its node is restarted by Ray (on any node with its resources: the model is loaded again) and its
batches run again there (encoding has no side effects); an encoder that still cannot finish a batch fails the
batch's owners as a ``crash`` of the model stage, which ``--retry-failed`` tries again.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from clip_model.errors import UserError
from pipeline.model.video_text import VideoTextModel
from pipeline.video.supervisor import Failure

Rows = torch.Tensor | Failure  # one owner's encoded rows, or why it has none
MAX_TASK_RETRIES = 3  # Ray's reruns of a batch whose actor died (its node lost), each on the restarted actor
RESENDS = 8  # ours, of a batch Ray failed anyway (its actor still restarting): 45 s of pauses in all
IN_FLIGHT_PER_ACTOR = 2  # batches an actor holds: one encoding, one arriving
PATIENCE_S = 120.0  # a batch waited on this long without a result is said on stderr (and again after as long)


def model_failure(e: Exception) -> Failure:
    """An exception of the model's, as the failure of the video it was encoding."""
    return Failure("error", "model", f"{type(e).__name__}: {' '.join(str(e).split())}")


@torch.no_grad()
def encode_batch(model: VideoTextModel, pieces: Sequence[torch.Tensor]) -> list[Rows]:
    """Owners' uint8 frames [(n_i, 3, S, S)] -> per owner its rows ((n_i / group) · rows_per_group, ..., E) or its
    Failure: the pieces in one model call, or where that call fails, each alone."""
    try:
        feats = model.encode(model.transform.normalize(torch.cat(list(pieces))))  # (B / group, ..., E)
        return list(feats.split([len(p) // model.group * model.rows_per_group for p in pieces]))
    except Exception:  # noqa: BLE001 - find whose frames fail; the others are kept
        return [_encode_alone(model, p) for p in pieces]


def _encode_alone(model: VideoTextModel, x: torch.Tensor) -> Rows:
    try:
        return model.encode(model.transform.normalize(x))
    except Exception as e:  # noqa: BLE001 - this owner's failure, reported as its error
        return model_failure(e)


class BatchEncoder(Protocol):
    capacity: int  # batches submitted and not yet taken back, at most

    def submit(self, pieces: list[torch.Tensor]) -> Any: ...

    def result(self, handle: Any, wait: bool) -> list[Rows] | None: ...  # None: not done yet (wait False)

    def close(self) -> None: ...


class LocalEncoder:
    """This process's model: a batch is encoded when submitted."""

    capacity = 1

    def __init__(self, model: VideoTextModel):
        self.model = model

    def submit(self, pieces: list[torch.Tensor]) -> list[Rows]:
        return encode_batch(self.model, pieces)

    def result(self, handle: list[Rows], wait: bool) -> list[Rows]:
        return handle

    def close(self) -> None:
        pass


class _EncoderActor:
    """A Ray actor holding the model (on its GPU where Ray gave it one): ``encode`` is ``encode_batch``."""

    def __init__(self, spec: str, device: str, precision: str, pooling: str | None, num_frames: int | None):
        from pipeline.model.loading import load_model
        from pipeline.model.runtime import resolve_device

        self.model = load_model(spec, resolve_device(device), precision, pooling, num_frames)
        self.device = str(next(self.model.model.parameters()).device)

    def where(self) -> str:
        import ray

        return f"{ray.get_runtime_context().get_node_id()} {self.device}"

    def encode(self, pieces: list[torch.Tensor]) -> list[Rows]:
        return encode_batch(self.model, pieces)


def _auto_precision() -> tuple[str, str]:
    from pipeline.model.loading import resolve_precision
    from pipeline.model.runtime import resolve_device

    return resolve_precision("auto", resolve_device("auto"))


def auto_precision_on_gpu() -> tuple[str, str]:
    """``--precision auto`` as a GPU node of the connected cluster resolves it: (precision, why), from a task given
    one GPU (Ray shows it that GPU alone)."""
    from pipeline.video.ray_pool import import_ray

    ray = import_ray()
    precision, why = ray.get(ray.remote(num_gpus=1, num_cpus=0, max_retries=3)(_auto_precision).remote())
    return precision, why


@dataclass(eq=False)
class _Batch:
    actor: int  # the one it was given to (Ray restarts a lost actor under the same handle)
    pieces: list[torch.Tensor]
    attempt: Any  # the Ray call under way for it (None: waiting until ``retry_at`` to be sent again)
    resent: int = 0
    retry_at: float = 0.0


class RayEncoders:
    """``count`` encoder actors on the connected Ray cluster, each with one GPU where ``gpus`` else one CPU; a batch
    goes to the live actor with the fewest batches under way, and results are taken back in submission order. A
    call that fails is sent again (encoding has no side effects): after a pause where its actor is restarting or
    its result was lost, at once to another actor where its actor is dead for good; when every actor is, the job
    ends in one line (what was committed stays)."""

    def __init__(self, spec: str, precision: str, pooling: str | None, num_frames: int | None, *, count: int,
                 gpus: bool):
        from pipeline.video.ray_pool import import_ray

        self.ray = ray = import_ray()
        self.gpus = gpus
        actor = ray.remote(max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)(_EncoderActor)
        # a GPU actor reserves no CPU: decode tasks waiting for one would otherwise take the CPU of a GPU node that
        # replaces a lost one before the actor's restart does, and starve it (Ray sets a CPU actor's threads to 1)
        resources = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        device = "auto" if gpus else "cpu"  # Ray shows a GPU actor its own GPU alone: auto takes it
        self.actors = [actor.options(**resources).remote(spec, device, precision, pooling, num_frames)
                       for _ in range(count)]
        self.capacity = IN_FLIGHT_PER_ACTOR * count
        self.cpus_held = 0 if gpus else count  # the decode tasks get the cluster's other CPUs
        self._load = [0] * count  # batches under way per actor
        self._dead: set[int] = set()
        self._under_way: dict[Any, _Batch] = {}  # by the handle submit gave

    def placements(self) -> list[str]:
        """Each actor's node id and device (once every actor has loaded the model)."""
        where = [a.where.remote() for a in self.actors]
        self._wait(where, "the encoder actors have waited", "to start")
        try:
            return self.ray.get(where)
        except self.ray.exceptions.RayActorError as e:  # its constructor raised: it is never restarted
            raise UserError(f"a Ray encoder actor could not start: {_cause_line(e)}") from None

    def submit(self, pieces: list[torch.Tensor]) -> Any:
        pieces = [p.contiguous() for p in pieces]  # a view would pickle its whole chunk's storage
        k = self._pick()
        handle = self.actors[k].encode.remote(pieces)
        self._under_way[handle] = _Batch(k, pieces, handle)
        return handle

    def result(self, handle: Any, wait: bool) -> list[Rows] | None:
        batch = self._under_way[handle]
        while True:
            if batch.attempt is None:  # waiting to be sent again
                if not wait and time.monotonic() < batch.retry_at:
                    return None
                time.sleep(max(0.0, batch.retry_at - time.monotonic()))
                self._send(batch, batch.actor)
            if not wait and not self.ray.wait([batch.attempt], timeout=0)[0]:
                return None
            self._wait([batch.attempt], "an encoder batch has waited", "(its node was lost, or it was never placed)")
            try:
                rows = self.ray.get(batch.attempt)
            except self.ray.exceptions.RayError as e:  # see the class's doc
                died = isinstance(e, self.ray.exceptions.ActorDiedError)  # for good (max_restarts is -1)
                if died:
                    self._dead.add(batch.actor)
                if batch.resent >= RESENDS:
                    rows = [Failure("crash", "model", f"the encoder failed on this batch {batch.resent + 1} times "
                                    f"(Ray: {type(e).__name__})")] * len(batch.pieces)
                elif died:
                    self._load[batch.actor] -= 1
                    batch.actor = self._pick(after=e)
                    self._send(batch, batch.actor)
                    continue
                else:  # restarting (Ray fails its calls at once), its node or the result lost: send it again
                    batch.attempt, batch.retry_at = None, time.monotonic() + min(0.5 * 2**batch.resent, 10.0)
                    continue
            del self._under_way[handle]
            self._load[batch.actor] -= 1
            return rows

    def _pick(self, after: Exception | None = None) -> int:
        live = [k for k in range(len(self.actors)) if k not in self._dead]
        if not live:
            raise UserError(f"every Ray encoder actor died ({_cause_line(after)}); what was committed is kept: "
                            "rerun to resume")
        k = min(live, key=self._load.__getitem__)
        self._load[k] += 1
        return k

    def _send(self, batch: _Batch, k: int) -> None:
        batch.resent += 1
        batch.attempt = self.actors[k].encode.remote(batch.pieces)

    def _wait(self, refs: list, waited: str, why: str) -> None:
        """Until every ref is ready; every ``PATIENCE_S`` a line on stderr: Ray places (and restarts) an actor only
        where a node has its resources free, silently."""
        seconds = 0.0
        while len(self.ray.wait(refs, num_returns=len(refs), timeout=PATIENCE_S)[0]) < len(refs):
            seconds += PATIENCE_S
            print(f"tag: {waited} {seconds:.0f} s for a node with a free {'GPU' if self.gpus else 'CPU'} {why}",
                  file=sys.stderr)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def _cause_line(e: Exception | None) -> str:
    """A Ray error's cause, without its traceback: the last non-empty line of its message."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
