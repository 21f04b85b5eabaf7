"""Sizing the Ray actor pool to a cluster, and the watch's rule: pure rules over node CPUs and actor states
(as Ray's GCS lists them), no Ray started. tests/test_engines_ray.py runs them on real clusters."""

from __future__ import annotations

import io

import pytest

from backtrans.engines import EngineError
from backtrans.engines.ray_cluster import Node, Watch, actor_slots, fits, pool_size, shortfall


def _nodes(*cpus: float, free: tuple[float, ...] | None = None, head_cpus: float | None = None) -> list[Node]:
    found = [] if head_cpus is None else [Node("h", "10.0.0.1", head_cpus, head_cpus, head=True)]
    for i, c in enumerate(cpus):
        found.append(Node(f"w{i}", f"10.0.0.{i + 2}", c, c if free is None else free[i]))
    return found


def test_one_actor_per_whole_cpu_when_a_read_task_still_fits_beside_it():
    assert [actor_slots(c) for c in (0, 0.5, 0.74, 0.75, 1, 1.5, 2, 8)] == [0, 0, 0, 1, 1, 1, 2, 8]


def test_a_head_without_cpus_and_two_one_cpu_workers_get_one_actor_each():
    assert pool_size(_nodes(1, 1, head_cpus=0)) == 2


def test_a_local_two_cpu_ray_gets_two_actors():
    assert pool_size(_nodes(2)) == 2


def test_the_default_stops_at_eight_actors_unless_the_cluster_has_more_nodes():
    assert pool_size(_nodes(8, 8)) == 8
    assert pool_size(_nodes(*[4] * 12)) == 12  # every node gets one


def test_the_default_follows_what_is_free_and_falls_back_to_what_the_nodes_have():
    assert pool_size(_nodes(4, 4, free=(1, 0))) == 1
    assert pool_size(_nodes(1, 1, free=(0, 0))) == 2  # all held by another job: sized to the nodes, then waits


def test_a_pool_that_leaves_no_node_room_to_read_does_not_fit():
    assert fits(3, [1, 1])  # two actors on one node, one beside the reader on the other
    assert not fits(4, [1, 1])  # every CPU held by actors: the reader could never run
    assert not fits(1, [0.5])
    assert fits(1, [0.75])


def test_asking_for_more_actors_than_the_cluster_holds_says_what_it_needs():
    with pytest.raises(EngineError) as raised:
        pool_size(_nodes(1, 1, head_cpus=0), requested=4)
    assert str(raised.value).startswith(
        "ray: no progress is possible: the actor pool needs 2 CPUs (4 actors x 0.5), and reading 0.25 more on one "
        "node; the cluster has 2 in all (head 10.0.0.1: 0 of 0 free, 10.0.0.2: 1 of 1 free, 10.0.0.3: 1 of 1 free)")
    assert pool_size(_nodes(1, 1), requested=3) == 3


def test_a_cluster_with_no_cpu_for_work_is_said_at_once():
    with pytest.raises(EngineError, match="no node has 0.75"):
        pool_size(_nodes(head_cpus=0))
    with pytest.raises(EngineError, match="--actors must be at least 1"):
        pool_size(_nodes(2), requested=0)


def test_the_shortfall_against_free_cpus_names_each_node():
    nodes = _nodes(1, 1, free=(0.75, 0))
    assert shortfall(1, nodes) is None
    assert shortfall(2, nodes) == ("the actor pool needs 1 CPU (2 actors x 0.5), and reading 0.25 more on one node; "
                                   "the cluster has 0.75 free (10.0.0.2: 0.75 of 1 free, 10.0.0.3: 0 of 1 free)")
    assert shortfall(1, _nodes(1, free=(0.5,))).startswith("the actor pool needs 0.5 CPUs (1 actor x 0.5)")


WORKERS = [Node("h", "10.0.0.1", 0, 0, head=True), Node("a", "10.0.0.2", 1, 0.5), Node("b", "10.0.0.3", 1, 0.5)]


def _actor(number: int, state: str = "ALIVE", node: str = "a", pid: int = 100) -> dict:
    return {"ActorID": f"actor{number}", "State": state, "Pid": pid, "Address": {"NodeID": node}}


def _watch(log: io.StringIO, total: int = 100) -> Watch:
    return Watch("01000000", 2, WORKERS, total, stall_s=30, log=log)


def test_the_watch_says_where_the_actors_run_and_lets_rows_flow():
    log = io.StringIO()
    watch = _watch(log)
    pool = [_actor(1, node="a"), _actor(2, node="b")]
    for second, done in ((0, 0), (10, 5), (45, 40), (80, 60)):
        watch.judge(second, done, 0, {}, WORKERS, pool)
    assert log.getvalue() == "ray: actors on 10.0.0.2 x1, 10.0.0.3 x1\n"


def test_requests_at_the_llm_or_actors_starting_are_waited_for_and_said():
    log = io.StringIO()
    watch = _watch(log)
    pool = [_actor(1), _actor(2, node="b")]
    watch.judge(0, 7, 0, {"actor1:100": {"in_flight": 16}}, WORKERS, pool)
    watch.judge(31, 7, 0, {"actor1:100": {"in_flight": 16}}, WORKERS, pool)
    assert "ray: no row finished for 31s; waiting on 16 requests at the LLM" in log.getvalue()
    starting = [_actor(1, "PENDING_CREATION"), _actor(2, "PENDING_CREATION", node="b")]
    watch.judge(62, 7, 0, {}, WORKERS, starting)
    assert "2 actors are still starting" in log.getvalue()


def test_a_dead_process_in_flight_count_does_not_keep_the_job_waiting():
    watch = _watch(io.StringIO())
    pool = [_actor(1, "RESTARTING", pid=0), _actor(2, "RESTARTING", node="b", pid=0)]
    watch.judge(0, 40, 40, {"actor1:100": {"in_flight": 16}}, WORKERS, pool)  # reported before its node died
    with pytest.raises(EngineError) as raised:
        watch.judge(31, 40, 40, {"actor1:100": {"in_flight": 16}}, WORKERS, pool)
    assert str(raised.value) == (
        "ray: no progress is possible: the actor pool needs 1 CPU; the cluster has 1 free (head 10.0.0.1: 0 of 0 "
        "free, 10.0.0.2: 0.5 of 1 free, 10.0.0.3: 0.5 of 1 free). At least 40 rows are finished and in the store; "
        "run the same command again to resume")


def test_a_lost_node_is_said_when_it_goes_and_named_in_the_reason():
    log = io.StringIO()
    watch = _watch(log)
    left = WORKERS[:2]
    pool = [_actor(1), _actor(2, "RESTARTING", node="b", pid=0)]
    watch.judge(0, 50, 50, {}, left, pool)
    assert log.getvalue().startswith("ray: node 10.0.0.3 left the cluster; its actors restart where there is room")
    with pytest.raises(EngineError, match="node 10.0.0.3 left the cluster; 1 of 2 actors wait for 0.5 CPUs"):
        watch.judge(40, 50, 50, {}, left, pool)


def test_rows_written_out_count_as_progress_and_a_finished_job_waits_for_its_output():
    log = io.StringIO()
    watch = _watch(log, total=100)
    pool = [_actor(1), _actor(2, node="b")]
    for second, written in ((0, 10), (25, 40), (50, 70), (75, 90)):  # every row finished; the output drains
        watch.judge(second, 100, written, {}, WORKERS, pool)
    watch.judge(110, 100, 90, {}, WORKERS, pool)
    assert "ray: every row is finished; Ray is still handing over the output" in log.getvalue()
