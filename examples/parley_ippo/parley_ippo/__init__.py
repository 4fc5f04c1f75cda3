"""parley_ippo: independent PPO as a Parley learner plugin.

- `config.py`   `IPPOConfig`, the typed hyperparameters (no torch, like Parley's own configs).
- `learner.py`  `IPPOLearner`: clipped PPO with GAE, one learner per agent process.
- `gossip.py`   `ReturnGossip`: a peer protocol; agents tell their neighbours their recent mean
                episode return, log what they hear, and may explore more while they trail.
- `best_return.py`  `CAPABILITY`: a capability of its own (agent_node/registry.py) with its config
                section in the run's `capabilities`, a check before launch and a report section.

A run names it by its entry point (`kind: ippo`, once this package is installed) or by its import
path (`kind: parley_ippo.learner:IPPOLearner`); the protocol goes in `agents.protocols` as
`{kind: return_gossip}` or `{kind: parley_ippo.gossip:ReturnGossip}`; the capability in the run's
`capabilities` as `{kind: best_return}` or `{kind: parley_ippo.best_return:CAPABILITY}`.
"""
