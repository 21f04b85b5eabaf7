"""Sizing the Ray actor pool to a cluster: pure rules over node CPUs, no Ray started."""

from __future__ import annotations

import pytest

from backtrans.engines import EngineError
from backtrans.engines.ray_cluster import Node, actor_slots, fits, pool_size, shortfall


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
