"""The network simulator and its fault plans, which drive the engines of protocols/engines/.

- `netsim.py`       A deterministic network simulator with a virtual clock, for driving sans-IO
                    engines.
- `simfaults.py`    Seeded random fault schedules for the network simulator, and the invariants
                    every run must keep.
- `simgoals.py`     The goal protocols for many simulated agents: team negotiation and hindsight
                    sharing under faults.
- `simplan.py`      Fault plans for many simulated agents: the real engines, a topology, a schedule
                    of faults.
- `conformance.py`  Does consensus do what the theory says? Three checks on the real engines, for a
                    conformance sheet.
"""
