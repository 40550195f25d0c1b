"""Placement rules shared by the baselines, the env and the policy (one rule in one place).

=====================  ====================================================================
`rlplace.rules.units`     colocation units of ops or of groups (`build_units`, `colocation_leaders`)
`rlplace.rules.estimate`  the memory estimate (one memory model: `op_memory_demand`, `memory_budget`)
`rlplace.rules.ledger`    `MemoryLedger`: bytes committed per device under the estimate
`rlplace.rules.feasible`  input checks and sound "no placement exists" errors (`prepare`)
`rlplace.rules.repair`    `legalize`, `repair_estimate`, `repair_exact`
`rlplace.rules.finish`    legalize, evaluate, repair, evaluate again (`settle`, `finalize`)
=====================  ====================================================================

This package sits in the core layer: it imports graph, cluster, costs, placement, units and
(lazily) simulate, never the baselines, the env or the agents.
"""

from rlplace.rules.estimate import activation_share, memory_budget, op_memory_demand, work_reserve
from rlplace.rules.feasible import NoRoomError, check_feasible, prepare, start_assignment_error, unit_memory_floor
from rlplace.rules.finish import TIME_TOLERANCE, SearchKey, cutoff_for, finalize, fit_with_fallback, key_better, key_equal, make_simulator, settle
from rlplace.rules.ledger import MemoryLedger, ledger_for
from rlplace.rules.repair import EXACT_REPAIR_TRIES, legalize, repair_estimate, repair_exact, units_to_move
from rlplace.rules.units import Units, build_units, colocation_leaders

__all__ = [
    "EXACT_REPAIR_TRIES",
    "TIME_TOLERANCE",
    "MemoryLedger",
    "NoRoomError",
    "SearchKey",
    "Units",
    "activation_share",
    "build_units",
    "check_feasible",
    "colocation_leaders",
    "cutoff_for",
    "finalize",
    "fit_with_fallback",
    "key_better",
    "key_equal",
    "ledger_for",
    "legalize",
    "make_simulator",
    "memory_budget",
    "op_memory_demand",
    "prepare",
    "repair_estimate",
    "repair_exact",
    "settle",
    "start_assignment_error",
    "unit_memory_floor",
    "units_to_move",
    "work_reserve",
]
