"""What every process of a run shares: settings, its resolved config, the control channel, config
errors.

- `settings.py`       Settings every node shares: membership timing, the network section, node ids
                      and endpoints.
- `node_config.py`    What a node process reads from its run's `resolved.yaml`: typed, validated
                      once, at start.
- `control.py`        The node side of the control channel to the orchestrator.
- `config_errors.py`  Config errors that name the field, what it expected and what it got.
- `import_path.py`    The object a config names by `package.module:name` (an env factory, a
                      plugin, a capability), and what is wrong with a path that names none.
"""
