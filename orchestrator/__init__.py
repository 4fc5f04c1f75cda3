"""The orchestrator: one YAML file in, a running topology of node processes out.

- `config`     the run's typed schema, loading with `--set` overrides, resolution, seeds
- `errors`     `ConfigError` and the translation of pydantic errors into `field.path: ...` lines
- `overrides`  `--set a.b.c=VALUE`
- `rundir`     the run directory (`runs/<name>/<timestamp>/`), its socket dir, the event log
- `plan`       the pure launch plan: which processes, with which argv, env and log files
- `cli`        `orchestrate validate | graph | up | status | logs | down`
- `runtime`    control server, local backend, live status (launches what `plan` describes)

The orchestrator never imports learning code: it launches nodes, it does not run them.
"""
