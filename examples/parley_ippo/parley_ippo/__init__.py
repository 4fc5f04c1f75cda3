"""parley_ippo: independent PPO as a Parley learner plugin.

- `config.py`   `IPPOConfig`, the typed hyperparameters (no torch, like Parley's own configs).
- `learner.py`  `IPPOLearner`: clipped PPO with GAE, one learner per agent process.

A run names it by its entry point (`kind: ippo`, once this package is installed) or by its import
path (`kind: parley_ippo.learner:IPPOLearner`).
"""
