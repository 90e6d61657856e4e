"""Deterministic topological sort (Kahn's algorithm, smallest ready node first)."""

import heapq


class CycleError(ValueError):
    pass


def topo_sort(graph: dict[str, list[str]]) -> list[str]:
    nodes = set(graph) | {dep for deps in graph.values() for dep in deps}
    waiting = {node: set(graph.get(node, ())) for node in nodes}
    dependents: dict[str, set[str]] = {node: set() for node in nodes}
    for node, deps in waiting.items():
        for dep in deps:
            dependents[dep].add(node)
    ready = [node for node, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent].discard(node)
            if not waiting[dependent]:
                heapq.heappush(ready, dependent)
    if len(order) < len(nodes):
        stuck = sorted(nodes - set(order))
        raise CycleError(f"cycle detected: {', '.join(stuck)}")
    return order
