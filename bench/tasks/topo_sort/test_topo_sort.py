import pytest
from topo_sort import CycleError, topo_sort


def test_chain():
    assert topo_sort({"c": ["b"], "b": ["a"], "a": []}) == ["a", "b", "c"]


def test_ready_nodes_are_taken_alphabetically():
    graph = {"app": ["lib", "log"], "lib": ["core"], "log": ["core"], "core": [], "cli": []}
    assert topo_sort(graph) == ["cli", "core", "lib", "log", "app"]


def test_dependencies_that_are_not_keys_are_nodes_too():
    assert topo_sort({"b": ["a", "z"], "y": []}) == ["a", "y", "z", "b"]


def test_empty_graph():
    assert topo_sort({}) == []


def test_every_node_after_its_dependencies():
    graph = {f"n{i:02d}": [f"n{j:02d}" for j in range(i) if (i * j) % 7 == 1] for i in range(30)}
    order = topo_sort(graph)
    assert sorted(order) == sorted(graph)
    position = {node: i for i, node in enumerate(order)}
    assert all(position[dep] < position[node] for node, deps in graph.items() for dep in deps)


def test_cycle_is_a_value_error_naming_the_stuck_nodes():
    graph = {"a": ["c"], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}
    with pytest.raises(CycleError, match=r"^cycle detected: a, b, c, d$"):
        topo_sort(graph)
    assert issubclass(CycleError, ValueError)


def test_self_dependency_is_a_cycle():
    with pytest.raises(ValueError, match=r"^cycle detected: x$"):
        topo_sort({"x": ["x"], "y": []})
