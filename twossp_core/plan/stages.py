"""The stages a run reports through progress, in order, each with its share of the run's time (torch-free).

The pipeline's own stages are declared here and each method declares its own in the method registry
(twossp_core/plan/methods.py), so progress (the service's percent, the job timeline) follows every method and every
new stage: a stage added to the pipeline is added to `prune_stages` too, a method's stages come with its registry
entry.
"""

from __future__ import annotations

from twossp_core.plan.declarations import Stage
from twossp_core.plan.methods import method_entry
from twossp_core.plan.spec import PruneSpec, SweepSpec

# before the method runs: load the model, tokenize the data, evaluate the dense model
SETUP = (Stage("load", 5), Stage("calibration", 5), Stage("evaluate_dense", 15))
# after it: evaluate the pruned model, heal it when asked (then evaluate it again), then save it
MEASURE = (Stage("evaluate_pruned", 15),)
HEAL = (Stage("heal_data", 2), Stage("heal", 60), Stage("evaluate_healed", 15))
# the heal's control (heal.control): a copy of the dense model healed the same way, once per job before anything
# is pruned, its stages named `control/<heal stage>`
CONTROL = "control"
EXPORT = Stage("export", 5)
# a sweep's last step: the comparison table and plots
COMPARISON = Stage("comparison", 2)
# zero-shot tasks, when a job asks for them: scored on the dense model once, then on every pruned (and healed) one
ZERO_SHOT_DENSE = Stage("zero_shot_dense", 15)
ZERO_SHOT_PRUNED = Stage("zero_shot_pruned", 15)
ZERO_SHOT_HEALED = Stage("zero_shot_healed", 15)


def method_stages(method: str) -> tuple[Stage, ...]:
    return method_entry(method).stages


def prune_stages(spec: PruneSpec) -> list[Stage]:
    """Every stage of one pruning run, in the order the pipeline reports them."""
    return [*_setup(spec), *_control(spec), *method_stages(spec.method), *_measure(spec), *_heal(spec), EXPORT]


def _setup(spec: PruneSpec | SweepSpec) -> tuple[Stage, ...]:
    return (*SETUP, ZERO_SHOT_DENSE) if spec.tasks else SETUP


def _measure(spec: PruneSpec | SweepSpec) -> tuple[Stage, ...]:
    return (*MEASURE, ZERO_SHOT_PRUNED) if spec.tasks else MEASURE


def _heal(spec: PruneSpec | SweepSpec) -> tuple[Stage, ...]:
    if spec.heal is None:
        return ()
    return (*HEAL, ZERO_SHOT_HEALED) if spec.tasks else HEAL


def _control(spec: PruneSpec | SweepSpec) -> list[Stage]:
    if spec.heal is None or not spec.heal.control:
        return []
    return [Stage(f"{CONTROL}/{s.name}", s.weight) for s in HEAL]


def run_prefix(method: str, sparsity: float) -> str:
    """How a sweep names one run's stages: `<run_prefix>/<stage>` (e.g. `shortgpt@0.25/influence`)."""
    return f"{method}@{sparsity:g}"


def sweep_stages(spec: SweepSpec) -> list[Stage]:
    """Every stage of a sweep: the shared setup (and the heal's control), each run's method, measure (and heal)
    stages and, when the sweep saves its models, its export, then the comparison."""
    stages = [*_setup(spec), *_control(spec)]
    for method in spec.methods:
        per_run = [*method_stages(method), *_measure(spec), *_heal(spec), *((EXPORT,) if spec.save_models else ())]
        for sparsity in spec.sparsities:
            stages += [Stage(f"{run_prefix(method, sparsity)}/{s.name}", s.weight) for s in per_run]
    stages.append(COMPARISON)
    return stages
