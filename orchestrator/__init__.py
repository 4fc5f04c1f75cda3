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

import signal


def honour_sigint() -> None:
    """Take SIGINT as Ctrl-C (KeyboardInterrupt, then the run's own clean shutdown) even when
    this process was started with it ignored, as a shell without job control starts `cmd &`.
    A run takes SIGINT over once it is under way and a sweep stops its runs with it, so one that
    came while the run was still starting must not be lost: `orchestrate` calls this first."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
