"""Parley's own PettingZoo environments.

Each module here is one versioned environment (`reward_collection` serves
`reward_collection_v0`). A module opens with the environment's full documentation and offers a
`parallel_env(...)` factory that returns a fresh `ParallelEnv`, so the env server can build any of
them from an import path such as `env_server.envs.reward_collection:parallel_env`.
"""
