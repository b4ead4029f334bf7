"""The actor pool's bookkeeping (`engine.actors`) against a scripted stand-in for Ray: which call runs
where, what a lost actor's call becomes, what is left running at the end. No Ray is started."""

import sys
import types

import pytest

from sonify.engine import actors


class _Ref:
    made = 0

    def __init__(self, outcome, ready=True):
        self.outcome, self.ready = outcome, ready
        self.seq = _Ref.made = _Ref.made + 1


class _Method:
    def __init__(self, actor, name):
        self.actor, self.name = actor, name

    def remote(self, *args):
        return self.actor.ray.submit(self.actor, self.name, args)


class _Handle:
    def __init__(self, ray, index):
        self.ray, self.index, self._actor_id = ray, index, f"actor-{index}"

    def __getattr__(self, name):
        if name.startswith("__") and name not in ("__ray_ready__", "__ray_terminate__"):
            raise AttributeError(name)
        return _Method(self, name)


class FakeRay:
    """Every ref is ready at once unless `script` says otherwise; `script(actor_index, method, args)`
    returns the outcome: a value, an exception to raise from `get`, or `PENDING` (never ready)."""
    PENDING = object()

    def __init__(self, script):
        self.script, self.handles, self.killed, self.calls = script, [], [], []
        errors = types.SimpleNamespace()

        class RayError(Exception):
            pass

        class RayActorError(RayError):
            actor_init_failed = False
        errors.RayError, errors.RayActorError = RayError, RayActorError
        self.exceptions = errors

    def remote(self, cls):
        ray = self

        class _Cls:
            def options(self, **kw):
                return self

            def remote(self, *args):
                h = _Handle(ray, len(ray.handles))
                ray.handles.append(h)
                return h
        return _Cls()

    def submit(self, actor, name, args):
        if name == "run":
            self.calls.append((actor.index, args))
        out = self.script(actor.index, name, args)
        return _Ref(None, ready=False) if out is self.PENDING else _Ref(out)

    def wait(self, refs, num_returns=1, timeout=None):
        ready = sorted((r for r in refs if r.ready), key=lambda r: r.seq)[:num_returns]   # the oldest first
        if len(ready) < num_returns and timeout is None:
            raise AssertionError("ray.wait would block forever")
        return ready, [r for r in refs if r not in ready]

    def get(self, ref):
        if isinstance(ref.outcome, BaseException):
            raise ref.outcome
        return ref.outcome

    def kill(self, handle, no_restart=True):
        self.killed.append(handle.index)


def _install(monkeypatch, script):
    fake = FakeRay(script)
    monkeypatch.setitem(sys.modules, "ray", fake)
    return fake


def test_an_actor_whose_graceful_exit_does_not_finish_is_killed_not_left_running(monkeypatch):
    """A finished pool must not leave an actor behind: one whose `__ray_terminate__` never completes
    (being rebuilt on a node with no room, or stuck) is killed after the wait."""
    def script(actor, method, args):
        if method == "__ray_terminate__" and actor == 1:
            return FakeRay.PENDING
        return {"partition": args[0]} if method == "run" else None

    fake = _install(monkeypatch, script)
    got = []
    actors.run_on_actors(object, (), [("p0", 0, 1), ("p1", 1, 1)], {}, 2, got.append, lambda c, r: None)
    assert sorted(g["partition"] for g in got) == ["p0", "p1"]
    assert 1 in fake.killed and 0 not in fake.killed


def test_a_call_whose_actor_dies_runs_again_elsewhere_and_every_result_arrives_once(monkeypatch):
    lost_once = set()

    def script(actor, method, args):
        if method == "run":
            if args[0] == "p1" and "p1" not in lost_once:
                lost_once.add("p1")
                return fake.exceptions.RayActorError("node lost")
            return {"partition": args[0]}
        return None

    fake = _install(monkeypatch, script)
    got = []
    actors.run_on_actors(object, (), [(f"p{i}", i, 1) for i in range(5)], {}, 2, got.append,
                         lambda c, r: pytest.fail("nothing is given up"))
    assert sorted(g["partition"] for g in got) == [f"p{i}" for i in range(5)]
    assert [c[1][0] for c in fake.calls].count("p1") == 2


def test_a_stage_asking_more_cpus_per_actor_than_the_local_ray_has_is_refused_in_one_line(monkeypatch, tmp_path):
    """No actor of it would ever be placed on a local Ray (no node joins one), so the pool would wait forever."""
    from sonify.engine import executor
    from sonify.engine.config import load_config
    from sonify.stages import stage_names
    from sonify.engine.errors import ConfigError
    from sonify.stages import get_stage

    fake = FakeRay(lambda *a: pytest.fail("no actor is started"))
    fake.cluster_resources = lambda: {"CPU": 2.0, "memory": 1e9}
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(["pipeline=demo", f"run.root={tmp_path}", "demo_data.enabled=false", "stages.mix.num_cpus=4"],
                      stage_names())
    with pytest.raises(ConfigError, match=r"^stages\.mix\.num_cpus=4 per actor, but this run's local Ray has 2 CPUs"):
        executor._run_ray(get_stage("mix"), cfg, tmp_path / "plan", [], lambda s: None)


def test_a_node_lost_with_idle_actors_on_it_does_not_make_the_running_partition_a_failed_one(monkeypatch):
    """Node X holds actors 0-2, node Y actor 3. X is lost while actor 2 runs p2 and actors 0 and 1, done,
    sit idle on it: p2 must wait for a live actor (3), not be handed to the dead idle ones until it
    counts as a partition that kills every worker it runs on."""
    state = {"lost": False}

    def script(actor, method, args):
        on_x = actor in (0, 1, 2)
        if method == "run":
            if on_x and (state["lost"] or args[0] == "p2"):
                state["lost"] = True
                return fake.exceptions.RayActorError("node X lost")
            return {"partition": args[0]}
        if method == "__ray_ready__" and on_x and state["lost"]:
            return FakeRay.PENDING   # being rebuilt: no room anywhere yet
        return None

    fake = _install(monkeypatch, script)
    got, lost = [], []
    actors.run_on_actors(object, (), [(f"p{i}", i, 1) for i in range(4)], {}, 4, got.append,
                         lambda c, r: lost.append((c, r)))
    assert lost == []
    assert sorted(g["partition"] for g in got) == ["p0", "p1", "p2", "p3"]


class _StopWaiting(Exception):
    pass


def test_a_pool_with_no_actor_placed_says_so_in_one_line_instead_of_waiting_in_silence(monkeypatch, caplog):
    """Every actor waits for room (a cluster without it, or every node holding actors lost): the pool
    warns once, naming what it waits for, and keeps waiting (an autoscaler may add a node)."""
    fake = _install(monkeypatch, lambda actor, method, args: FakeRay.PENDING if method == "__ray_ready__" else None)
    fake.cluster_resources = lambda: {"CPU": 0.0}
    waits = []
    plain_wait = fake.wait

    def wait(refs, num_returns=1, timeout=None):
        waits.append(timeout)
        if len(waits) > 3:
            raise _StopWaiting
        return plain_wait(refs, num_returns, timeout)

    fake.wait = wait
    with caplog.at_level("WARNING", logger="sonify"), pytest.raises(_StopWaiting):
        actors.run_on_actors(object, (), [("p0", 0, 1)], {"num_cpus": 4.0}, 2, lambda r: None, lambda c, r: None)
    lines = [r.getMessage() for r in caplog.records if "no actor of this stage is up" in r.getMessage()]
    assert len(lines) == 1 and "waiting for room for 1 actor(s) of {'num_cpus': 4.0}" in lines[0], lines
    assert sorted(fake.killed) == [0]   # the stage stopped: the actor that never got room is killed
