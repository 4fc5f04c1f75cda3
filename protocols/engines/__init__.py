"""The sans-IO peer engines (protocols/engines/engine.py) and the topology they run on.

- `engine.py`            The one interface every peer-protocol engine implements.
- `consensus.py`         Gossip averaging of named numpy tensors over the topology: sans-IO
                         consensus engines.
- `compression.py`       Compressed consensus shares: the codecs, and error feedback.
- `membership.py`        Membership: who among my neighbours is alive.
- `negotiation.py`       Goal negotiation before an episode: Dec-IMSAP's goal-coordination game, on
                         any topology.
- `team_negotiation.py`  Team-wide goal agreement on any graph: every agent's proposal flooded for
                         the diameter, sans-IO.
- `flooding.py`          Team-wide agreement on any graph by flooding: every node learns every
                         node's value, sans-IO.
- `hindsight.py`         Hindsight sharing after an episode, and HER relabelling: a sans-IO engine
                         plus pure functions.
- `supervision.py`       A supervisor that assigns one goal to its team each episode, over the wire:
                         sans-IO engines.
- `step_links.py`        Peer links whose delay counts env steps: talking takes time in the world's
                         clock.
- `topology.py`          Communication topologies between agents, and the mixing weights consensus
                         runs on.
- `bootstrap.py`         What neighbours give a newcomer: an agent that joins a run mid-way without
                         saved state (a restart whose checkpoint was lost, `run.on_corrupt_state:
                         start_fresh`) asks its neighbours for the parameters the team averages, and
                         starts from their mean instead of from scratch.
"""
