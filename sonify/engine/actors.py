"""Partitions on a pool of Ray actors: one call per partition, each actor built from small arguments.

Why not Ray Data's actor pool: it hands every actor its UDF and data context as object-store refs
and restarts actors (max_restarts=-1), which Ray's core worker reports on every pool ("constructor
arguments in the object store and max_restarts > 0", ray#53727): a restarted actor whose refs are
lost cannot be rebuilt. Here an actor is constructed from the stage class, the config as a plain dict
and the plan file's path (a few KB, inlined in the creation task); it reads its rows from the plan
file. When an actor dies (its node lost), its partition goes to the next actor that is up while Ray
rebuilds the dead one from the same arguments wherever there is room: partition files are written
atomically under the partition's name, so a partition run twice is still written once.

Work goes only to actors that are up: an actor waiting for room (concurrency above what the cluster
has) takes partitions as soon as a node with room joins; one that never gets room is dropped at the
end. Finished actors exit on their own (`__ray_terminate__`), so teardown leaves no kill to race.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable

from sonify.engine.errors import SonifyError

log = logging.getLogger("sonify")


def run_on_actors(worker_cls: type, args: tuple, calls: list[tuple], options: dict, concurrency: int,
                  on_result: Callable[[object], None], on_lost: Callable[[tuple, str], None],
                  max_losses: int = 3, wait_note_s: float = 60) -> None:
    """`worker_cls(*args).run(*call)` for every call, spread over up to `concurrency` actors started with
    `options` (num_cpus, num_gpus, ...); `on_result` gets each call's return value as it arrives.

    A call whose actor dies (its process or node lost) goes back to the front of the queue for the next
    actor that is up, while Ray rebuilds the dead one (idle actors, which may have been on the same node,
    answer a readiness probe before they take work again); a call that loses its actor `max_losses` times
    (it kills every worker it runs on) is given up: `on_lost(call, reason)`. When no actor is up for
    `wait_note_s` (none placed yet: a cluster without room, or every node with actors lost) it says so in
    one warning line and keeps waiting (an autoscaler may be adding nodes)."""
    import ray

    actor_cls = ray.remote(WorkerShell).options(max_restarts=-1, max_task_retries=0, **options)
    queue = deque(calls)
    actors = [actor_cls.remote(worker_cls, *args) for _ in range(max(1, min(int(concurrency), len(queue))))]
    starting = {a.__ray_ready__.remote(): a for a in actors}
    running: dict = {}
    up, losses, probes = {}, {}, {}
    idle: deque = deque()   # actors that are up with nothing to do
    failed, noted = True, False
    try:
        while queue or running:
            if not (running or starting):
                raise SonifyError(f"no Ray worker left to run {len(queue)} partitions: every actor was lost and not rebuilt")
            ready = ray.wait(list(running) + list(starting), num_returns=1, timeout=wait_note_s)[0]
            if not ready:   # nothing came back for a while: say so when no actor is up, rather than wait in silence
                if not running and not noted:
                    noted = True
                    log.warning("no actor of this stage is up after %ds: waiting for room for %d actor(s) of %s on the "
                                "cluster (%s); %d partitions to do", wait_note_s, len(starting), options,
                                ray.cluster_resources(), len(queue))
                continue
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    _get(ray, ref)
                except ray.exceptions.RayActorError as e:
                    if e.actor_init_failed:   # its constructor failed (a model that does not load): the stage stops
                        raise
                    # lost before it was up (its node went): wait for Ray's rebuild, a few times at most
                    probes[actor._actor_id] = probes.get(actor._actor_id, 0) + 1
                    if probes[actor._actor_id] <= max_losses:
                        starting[actor.__ray_ready__.remote()] = actor
                    continue
                up[actor._actor_id] = actor
                idle.append(actor)
            else:
                actor, call = running.pop(ref)
                try:
                    result = _get(ray, ref)
                except ray.exceptions.RayActorError as e:   # the actor died under this call: Ray rebuilds it
                    # and the idle actors may have gone with it (same node): each proves it is up again before
                    # it takes work, so a call is never charged for landing on an actor that was already dead
                    for a in [actor, *idle]:
                        up.pop(a._actor_id, None)
                        starting[a.__ray_ready__.remote()] = a
                    idle.clear()
                    losses[call] = losses.get(call, 0) + 1
                    reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
                    if losses[call] >= max_losses:
                        on_lost(call, f"its worker was lost {losses[call]} times ({reason})")
                    else:
                        queue.appendleft(call)
                else:
                    on_result(result)
                    idle.append(actor)
            while queue and idle:   # every actor that is up and free takes the next partition
                actor = idle.popleft()
                call = queue.popleft()
                running[actor.run.remote(*call)] = (actor, call)
        failed = False
    finally:
        _stop(ray, actors, up, failed)


class WorkerShell:
    """The actor: builds `worker_cls(*args)` and forwards `run` to it. A SonifyError of the constructor (a model
    that does not load) is kept and raised by the first `run`, so it reaches the driver as itself, in one line
    (`_get`), and stops the stage; raised in the constructor, Ray would report it as `ActorDiedError` with
    the worker's whole traceback in its text and the exception itself gone."""

    def __init__(self, worker_cls: type, *args):
        self.worker, self.error = None, None
        try:
            self.worker = worker_cls(*args)
        except SonifyError as e:
            self.error = e

    def run(self, *call):
        if self.error is not None:
            raise self.error
        return self.worker.run(*call)


def _stop(ray, actors: list, up: dict, failed: bool) -> None:
    """Actors that are up exit gracefully (no kill for Ray's teardown to race); the others (never placed,
    being rebuilt, or a stage stopped by an error), and any whose exit has not finished within 30 s (one
    being rebuilt where there is no room would wait for it forever), are killed."""
    exits = {} if failed else {a.__ray_terminate__.remote(): a for a in up.values()}
    finished = set()
    if exits:
        finished = set(ray.wait(list(exits), num_returns=len(exits), timeout=30)[0])
    gone = {exits[r]._actor_id for r in finished}
    for a in actors:
        if a._actor_id not in gone:
            ray.kill(a, no_restart=True)


def _get(ray, ref):
    """`ray.get`, with a sonify error raised in an actor (its constructor's: `WorkerShell`) re-raised as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None) or getattr(getattr(e, "error_cause", None), "cause", None)
        if isinstance(cause, SonifyError):
            raise cause from None
        raise
