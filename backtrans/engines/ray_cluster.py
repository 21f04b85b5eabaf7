"""The Ray cluster as `--engine ray` sees it: joining it, sizing the work to it, and saying why a job stops.

Every piece of work asks Ray for a share of a CPU: an actor (one event loop, one LLM client) asks for
ACTOR_CPUS, a read or write task for TASK_CPUS. The pool gets one actor per whole CPU a node has free, at most
DEFAULT_MAX_ACTORS unless the cluster has more nodes than that (each node then gets one), and never more than
the nodes can hold while one of them still has room for a read task: a pool that fills every CPU leaves the
reader nowhere to run, and the job waits forever (what issue 19 saw: 2 actors on two 1-CPU nodes, and a
reader asking for a whole CPU).

While the job runs, `Watch` compares what finished with what the cluster holds. When no row finished for
STALL_S seconds and nothing is in flight at the LLM, it names what the job waits for (actors that no node has
room for, a node that left, a task with no CPU to run on) and stops the job: finished rows are in the store.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from backtrans.engines import EngineError

ACTOR_CPUS = 0.5  # an actor's client work is light (about 1 ms of CPU per row); half a CPU leaves room beside it
TASK_CPUS = 0.25  # a read or write task: Ray's default of 1 CPU would not fit beside an actor on a 1-CPU node
DEFAULT_MAX_ACTORS = 8  # x --concurrency 16 = 128 requests in flight, what one vLLM server batches at once
STALL_S = float(os.environ.get("BACKTRANS_RAY_STALL_S", "30"))  # no row finished and nothing in flight: stop
POOL_CLASS = "(_Worker)"  # Ray Data names the pool's actors MapWorker(MapBatches(_Worker))
WAITING = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "RESTARTING")  # GCS actor states short of ALIVE
TOKEN_HELP = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to a file holding the cluster's token (or put it in "
              "~/.ray/auth_token); `ray get-auth-token` on the head prints it")


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    cpus: float  # what the node was started with
    free: float  # what no task or actor holds now
    head: bool = False

    def describe(self) -> str:
        return f"{'head ' if self.head else ''}{self.ip}: {self.free:g} of {self.cpus:g} free"


def actor_slots(cpus: float) -> int:
    """Actors a node with `cpus` takes by default: one per whole CPU, if one read task still fits beside them."""
    return max(1, int(cpus + 1e-9)) if cpus + 1e-9 >= ACTOR_CPUS + TASK_CPUS else 0


def _holds(cpus: float) -> int:
    """Actors that fit in `cpus`, packed."""
    return math.floor(cpus / ACTOR_CPUS + 1e-9) if cpus > 0 else 0


def fits(actors: int, cpus: list[float]) -> bool:
    """Whether `actors` fit on nodes with these CPUs while one node keeps TASK_CPUS for reading and writing."""
    total = sum(_holds(c) for c in cpus)
    return any(c + 1e-9 >= TASK_CPUS and total - _holds(c) + _holds(c - TASK_CPUS) >= actors for c in cpus)


def shortfall(actors: int, nodes: list[Node], free: bool = True) -> str | None:
    """None if the pool fits the nodes' free CPUs (or, with free=False, the CPUs they have); else why not."""
    have = [n.free if free else n.cpus for n in nodes]
    if fits(actors, have):
        return None
    pool = f"{actors} actor{'' if actors == 1 else 's'} x {ACTOR_CPUS:g}"
    return (f"the actor pool needs {_cpus(actors * ACTOR_CPUS)} ({pool}), and reading {TASK_CPUS:g} more on one "
            f"node; the cluster has {sum(have):g} {'free' if free else 'in all'} ({describe(nodes)})")


def _cpus(amount: float) -> str:
    return f"{amount:g} CPU{'' if amount == 1 else 's'}"


def describe(nodes: list[Node]) -> str:
    return ", ".join(n.describe() for n in nodes) or "no node"


def pool_size(nodes: list[Node], requested: int | None = None) -> int:
    """The number of actors: `requested` (--actors) if the cluster can ever hold it, else one per free CPU."""
    if requested is not None:
        if requested < 1:
            raise EngineError("--actors must be at least 1")
        missing = shortfall(requested, nodes, free=False)
        if missing:
            raise EngineError(f"ray: no progress is possible: {missing}. Start more nodes, or ask for fewer "
                              "actors (--actors)")
        return requested
    for use_free in (True, False):  # what is free now; else what the nodes have, once other jobs let go
        slots = [actor_slots(n.free if use_free else n.cpus) for n in nodes]
        if sum(slots):
            size = max(sum(1 for s in slots if s), min(DEFAULT_MAX_ACTORS, sum(slots)))
            while size > 1 and not fits(size, [n.free if use_free else n.cpus for n in nodes]):
                size -= 1
            return size
    raise EngineError(f"ray: no progress is possible: an actor needs {ACTOR_CPUS:g} CPU and reading {TASK_CPUS:g} "
                      f"more on one node; no node has {ACTOR_CPUS + TASK_CPUS:g} ({describe(nodes)}). Start a worker "
                      "node with CPUs (`ray start --address=HEAD:PORT --num-cpus=N`)")


def nodes() -> list[Node]:
    """The cluster's live nodes, with their CPUs, from Ray's GCS (no dashboard needed)."""
    import ray
    from ray._private import state

    free = state.available_resources_per_node()
    found = []
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        resources = info.get("Resources", {})
        found.append(Node(info["NodeID"], info.get("NodeManagerAddress", "?"), float(resources.get("CPU", 0)),
                          float(free.get(info["NodeID"], {}).get("CPU", 0)),
                          "node:__internal_head__" in resources))
    return sorted(found, key=lambda n: (not n.head, n.ip, n.node_id))


def pool_actors(job_id: str) -> list[dict]:
    """This job's pool actors as the GCS lists them (state, node), restarts included."""
    from ray._private import state

    return [a for a in state.actors(job_id=_job(job_id)).values() if POOL_CLASS in a.get("ActorClassName", "")]


def _starting(actor: dict) -> bool:
    """Created but not ready: the GCS gives a pending actor a PID once a node granted it a worker process (while
    it waits for CPUs, the PID is 0)."""
    return actor["State"] in ("DEPENDENCIES_UNREADY", "PENDING_CREATION") and bool(actor.get("Pid"))


def _job(job_id: str):
    import ray

    return ray.JobID(bytes.fromhex(job_id))


def _address(address: str | None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS") or None


def _probe(address: str) -> None:
    """A Ray that does not answer makes `ray.init` retry for minutes in silence: ask the port first."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"ray: {address!r} is not a Ray address: give HOST:PORT (the head's --port, 6379 by "
                          "default), or `auto` on a node of the cluster")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise EngineError(f"ray: no Ray cluster answers at {address} ({exc.strerror or exc}). Start one with "
                          f"`ray start --head --port={port}`, or leave RAY_ADDRESS and --ray-address unset for a "
                          "local Ray") from None


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS); without one, start a local Ray. True if we called init.

    Token authentication (on by default since Ray 2.59 for local clusters, and in 2.60 wherever the head found
    a token) is Ray's own: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN, or
    ~/.ray/auth_token) in this process's environment. A missing or wrong token is said in one line.
    """
    import ray

    if ray.is_initialized():
        return False
    address = _address(address)
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not address:
        root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **quiet)
        return True
    _probe(address)
    # The workers of a cluster we did not start get this package from the driver.
    package = str(Path(__file__).resolve().parents[1])
    try:
        ray.init(address=address, runtime_env={"py_modules": [package]}, **quiet)
    except Exception as exc:  # a refused token surfaces as a ConnectionError caused by an auth error, or as one
        causes, cause = [], exc
        while cause is not None and len(causes) < 10:
            causes.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        if any(word in " ".join(causes) for word in ("uthenticat", "AuthToken", "auth token")):
            raise EngineError(f"ray: the cluster at {address} asks for its token, and this process has none it "
                              f"accepts: {TOKEN_HELP}") from None
        raise EngineError(f"ray: could not join the cluster at {address}: {causes[0].splitlines()[0]}") from None
    return True


@dataclass
class Watch:
    """Tells what the job waits for, and stops it (EngineError) when no progress is possible."""

    job_id: str
    actors: int
    start: list[Node]
    total: int | None = None  # rows in the job
    stall_s: float = STALL_S
    log: TextIO = sys.stderr

    def __post_init__(self) -> None:
        self.last_seen: tuple[int, int] | None = None
        self.last_change = time.monotonic()
        self.lost: set[str] = set()
        self.placed = False
        self.ips = {n.node_id: n.ip for n in self.start}

    def check(self, done: int, written: int, counts: dict[str, dict]) -> None:
        """Called every few seconds with the rows the actors finished, the rows written out, and the board's
        counts (`ray_engine._Board`); requests in flight count only for actor processes still alive."""
        self.judge(time.monotonic(), done, written, counts, nodes(), pool_actors(self.job_id))

    def judge(self, now: float, done: int, written: int, counts: dict[str, dict], now_nodes: list[Node],
              pool: list[dict]) -> None:
        """The rule, over what `check` read from the GCS: say what the job waits for; raise when nothing can move."""
        self.ips.update({n.node_id: n.ip for n in now_nodes})
        alive = {n.node_id for n in now_nodes}
        for node in self.start:
            if node.node_id not in alive and node.node_id not in self.lost:
                self.lost.add(node.node_id)
                print(f"ray: node {node.ip} left the cluster; its actors restart where there is room "
                      f"({describe(now_nodes)})", file=self.log, flush=True)
        states = Counter(a["State"] for a in pool)
        alive_keys = {f"{a['ActorID']}:{a['Pid']}" for a in pool if a["State"] == "ALIVE"}
        in_flight = sum(c.get("in_flight", 0) for key, c in counts.items() if key in alive_keys)
        if not self.placed and states["ALIVE"] >= self.actors:
            self.placed = True
            where = Counter(self.ips.get(a["Address"].get("NodeID"), "?") for a in pool if a["State"] == "ALIVE")
            print("ray: actors on " + ", ".join(f"{ip} x{k}" for ip, k in sorted(where.items())), file=self.log,
                  flush=True)
        if (done, written) != self.last_seen:
            self.last_seen, self.last_change = (done, written), now
            return
        if now - self.last_change < self.stall_s:
            return
        quiet = f"ray: no row finished for {now - self.last_change:.0f}s; "
        if in_flight > 0 and states["ALIVE"] > 0:
            return self._note(now, quiet + f"waiting on {in_flight} requests at the LLM")
        starting = sum(1 for a in pool if _starting(a))
        if starting:  # a process of its own already (imports, the shipped package): slow, not stuck
            return self._note(now, quiet + f"{starting} actor{' is' if starting == 1 else 's are'} still starting")
        waiting = any(a["State"] in WAITING for a in pool)
        if self.total is not None and done >= self.total and not waiting:
            return self._note(now, "ray: every row is finished; Ray is still handing over the output")
        # The board hears from actors every quarter second; rows a lost node finished last may be missing here.
        kept = (f"At least {done} rows are finished and in the store; run the same command again to resume"
                if done > 0 else "No row was finished; run the same command again once the cluster has room")
        raise EngineError(f"ray: no progress is possible: {self.reason(now_nodes, pool, now)}. {kept}")

    def _note(self, now: float, line: str) -> None:
        """Waiting, for a reason that will pass: say it (once per stall_s) and go on."""
        print(line, file=self.log, flush=True)
        self.last_change = now

    def reason(self, now_nodes: list[Node], pool: list[dict], now: float) -> str:
        parts = []
        if self.lost:
            ips = sorted(n.ip for n in self.start if n.node_id in self.lost)
            parts.append(f"node{'s' if len(ips) > 1 else ''} {', '.join(ips)} left the cluster")
        waiting = [a for a in pool if a["State"] in WAITING and not _starting(a)]
        alive = sum(a["State"] == "ALIVE" for a in pool)
        free = sum(n.free for n in now_nodes)
        if waiting and alive == 0:
            parts.append(f"the actor pool needs {_cpus(self.actors * ACTOR_CPUS)}; the cluster has {free:g} free "
                         f"({describe(now_nodes)})")
        elif waiting:
            parts.append(f"{len(waiting)} of {self.actors} actors wait for {_cpus(len(waiting) * ACTOR_CPUS)}; the "
                         f"cluster has {free:g} free ({describe(now_nodes)})")
        elif max((n.free for n in now_nodes), default=0) + 1e-9 < TASK_CPUS:
            parts.append(f"reading or writing needs {TASK_CPUS:g} CPU on one node; the cluster has {free:g} free "
                         f"({describe(now_nodes)})")
        else:
            parts.append(f"no row finished for {now - self.last_change:.0f}s and no request is in flight; "
                         f"{alive} of {self.actors} actors are alive ({describe(now_nodes)})")
        return "; ".join(parts)
