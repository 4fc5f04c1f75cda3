"""What an agent node (agent_node/node.py) reports: its periodic metrics (the learner's means,
the link and peer counters, the capabilities' records) and its status to the orchestrator."""

from __future__ import annotations


def flush_metrics(node, step: int) -> None:
    """The periodic metrics: the means accumulated, the link and peer counters, the
    capabilities' records."""
    node.flushed_step = step
    node.metrics.flush_means(step)
    node.metrics.write(step, node.hub.link_metrics())  # per-link counters (network:)
    node.metrics.write(step, peer_traffic(node))
    if node.talk is not None:
        node.metrics.write(step, node.talk.metrics())
    for capability in node.capabilities:
        if record := capability.metrics():
            node.metrics.write(step, record)



def send_status(node, now: float) -> None:
    elapsed = max(1e-9, now - node.started_at)
    node.control.send_status(
        now, state=node.state.value, step=node.step, episode=node.episodes.episodes if node.episodes else 0,
        last_return=node.episodes.last_return if node.episodes else None, msgs_per_s=node.messages_handled / elapsed,
        extra={**({"membership/peers_alive": float(len(node.mesh.alive_peers()))} if node.mesh else {}),
               **{f"reproducibility/{cause}": 1.0 for cause in sorted(node.broken_causes)}},
    )



def peer_traffic(node) -> dict[str, float]:
    """Messages and bytes sent to each neighbour so far (every kind: heartbeats, agreement,
    hindsight, consensus), for the report's traffic per edge."""
    traffic: dict[str, float] = {}
    for neighbour, link in (node.mesh.links.items() if node.mesh is not None else ()):
        if (stats := getattr(link, "stats", None)) is not None:
            traffic[f"peer/{neighbour}/sent"] = float(stats.sent)
            traffic[f"peer/{neighbour}/bytes_sent"] = float(stats.bytes_sent)
    return traffic
