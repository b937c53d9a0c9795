"""What the benchmark runs: the per-task budgets of each profile, and the runs of each suite.

A profile fixes, per task, how much training data and how many epochs both models get, how
many seeds run and how much of the evaluation split is used. ``cpu`` uses seeded subsets
small enough for a 2-core machine; ``full`` uses every training example (for a GPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from core.errors import ConfigError
from protolm.encoders import DEFAULT_ENCODER

ARCHITECTURES = ("protolm", "baseline")
BASE_SEED = 42


@dataclass(frozen=True)
class TaskBudget:
    train_samples: int | None  # seeded subset of the training split; None: all of it
    epochs: float
    seeds: int
    test_samples: int | None = None  # seeded subset of the evaluation split; None: all of it
    faithfulness_samples: int | None = 200


CPU_BUDGETS: dict[str, TaskBudget] = {
    "sst2": TaskBudget(4000, 1, 1, faithfulness_samples=100),
    "sst5": TaskBudget(3000, 1, 3, faithfulness_samples=100),
    "rte": TaskBudget(1500, 1, 3, faithfulness_samples=100),
    "wnli": TaskBudget(None, 2, 3, faithfulness_samples=71),
    "mrpc": TaskBudget(1500, 1, 3, faithfulness_samples=100),
    "imdb": TaskBudget(1000, 1, 1, test_samples=500, faithfulness_samples=50),
    "qnli": TaskBudget(2000, 1, 1, faithfulness_samples=100),
    "mnli": TaskBudget(2000, 1, 1, test_samples=2000, faithfulness_samples=100),
}
FULL_BUDGETS: dict[str, TaskBudget] = {
    task: TaskBudget(None, 3, max(budget.seeds, 3), None, 500) for task, budget in CPU_BUDGETS.items()
}
PROFILES = {"cpu": CPU_BUDGETS, "full": FULL_BUDGETS}
TASK_ORDER = tuple(CPU_BUDGETS)

# SST-2 ablations: one setting changed at a time from the defaults; (group, label, overrides).
ABLATION_TASK = "sst2"
ABLATION_BUDGET = {"cpu": TaskBudget(2000, 1, 1, faithfulness_samples=None), "full": TaskBudget(None, 3, 1, faithfulness_samples=None)}
ABLATIONS: tuple[tuple[str, str, dict], ...] = (
    ("default", "N=200, K=0.5 (50 per class), λ=(0.5, 0.25, 0.25), cosine, push", {}),
    *(("prototypes", f"N={n}", {"num_prototypes": n}) for n in (2, 10, 50, 1000)),
    *(("top_k", f"K={k}", {"top_k": k}) for k in (1, 100)),
    ("weights", "λ=(1, 0, 0): cross-entropy only", {"ce_weight": 1.0, "cohesion_weight": 0.0, "separation_weight": 0.0}),
    ("weights", "λ=(0.5, 0.5, 0): no separation", {"ce_weight": 0.5, "cohesion_weight": 0.5, "separation_weight": 0.0}),
    *(("similarity", f"similarity={s}", {"similarity": s}) for s in ("inverse", "log")),
    ("push", "without push", {"push": False}),
)

# Learning curves: both heads at growing training budgets, 1 epoch, the whole test split, no
# faithfulness; 3 seeds up to CURVE_SEEDED_UP_TO examples, 1 above. None: the whole training split.
CURVE_SIZES: dict[str, tuple[int | None, ...]] = {
    "sst2": (500, 1000, 2000, 4000, 8000),
    "sst5": (500, 1000, 2000, 4000, 8000),
    "mrpc": (500, 1000, 2000, None),  # 3,668 in all
}
CURVE_SEEDED_UP_TO = 4000  # through 4,000: with one seed there, SST-5 ended 0.8 points under the baseline
CURVE_SEEDS = 3
# Full data on the CPU: every training example, 1 epoch, 1 seed, both heads, the whole test
# split, batches of similar length (1.7x faster; hours either way on a CPU).
FULL_DATA_TASKS = ("sst2", "imdb")
FULL_DATA_BUDGET = TaskBudget(None, 1, 1, faithfulness_samples=100)
FULL_DATA_OVERRIDES = {"group_by_length": True}
SIZED_SUITES = ("curves", "full-data")  # suites whose runs differ by training size


@dataclass(frozen=True)
class RunSpec:
    suite: str  # "tasks" or "ablations"
    task: str
    architecture: str
    seed: int
    budget: TaskBudget
    encoder: str = DEFAULT_ENCODER
    group: str = "main"  # ablation group; "main" for the task suite
    label: str = "default"
    overrides: dict = field(default_factory=dict)
    keep_model: bool = False  # keep the model directory: the plots draw its encodings

    @property
    def run_id(self) -> str:
        setting = "default" if not self.overrides else "-".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        if self.suite in SIZED_SUITES:
            setting = f"train={self.budget.train_samples or 'all'}"
        return f"{self.suite}__{self.task}__{self.architecture}__{setting}__seed{self.seed}".replace("/", "_")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "run_id": self.run_id}


def _tasks(names: list[str] | None) -> list[str]:
    names = names or list(TASK_ORDER)
    unknown = [n for n in names if n not in TASK_ORDER]
    if unknown:
        raise ConfigError(f"unknown benchmark task(s) {unknown}; known: {', '.join(TASK_ORDER)}")
    return names


def task_suite(profile: str, tasks: list[str] | None = None, encoder: str = DEFAULT_ENCODER) -> list[RunSpec]:
    """Every task's first seed comes before any task's second, so an interrupted suite
    still covers every task."""
    budgets = _profile(profile)
    return [
        RunSpec("tasks", task, architecture, BASE_SEED + s, budgets[task], encoder)
        for s in range(max(b.seeds for b in budgets.values()))
        for task in _tasks(tasks)
        if s < budgets[task].seeds
        for architecture in ARCHITECTURES
    ]


def ablation_suite(profile: str, encoder: str = DEFAULT_ENCODER) -> list[RunSpec]:
    _profile(profile)
    return [
        RunSpec("ablations", ABLATION_TASK, "protolm", BASE_SEED, ABLATION_BUDGET[profile], encoder, group, label, overrides,
                keep_model=group == "default" or "similarity" in overrides)
        for group, label, overrides in ABLATIONS
    ]


def _tasks_of(tasks: list[str] | None, suite_tasks) -> list[str]:
    """The asked tasks (checked) that the suite runs, or all of the suite's."""
    return [t for t in _tasks(tasks) if t in suite_tasks] if tasks else list(suite_tasks)


def _curve_seeds(size: int | None) -> int:
    return CURVE_SEEDS if size is not None and size <= CURVE_SEEDED_UP_TO else 1


def curve_suite(profile: str, tasks: list[str] | None = None, encoder: str = DEFAULT_ENCODER) -> list[RunSpec]:
    """Every task and size at the first seed, then the second and third seeds of the small sizes."""
    budgets = _profile(profile)
    names = _tasks_of(tasks, CURVE_SIZES)
    return [
        RunSpec("curves", task, architecture, BASE_SEED + s, TaskBudget(size, 1, _curve_seeds(size), budgets[task].test_samples, None),
                encoder, "curve", f"{size:,} examples" if size else "all examples")
        for s in range(CURVE_SEEDS)
        for task in names
        for size in CURVE_SIZES[task]
        if s < _curve_seeds(size)
        for architecture in ARCHITECTURES
    ]


def full_data_suite(tasks: list[str] | None = None, encoder: str = DEFAULT_ENCODER) -> list[RunSpec]:
    names = _tasks_of(tasks, FULL_DATA_TASKS)
    return [RunSpec("full-data", task, architecture, BASE_SEED, FULL_DATA_BUDGET, encoder, "full-data", "all examples",
                    dict(FULL_DATA_OVERRIDES))
            for task in names for architecture in ARCHITECTURES]


def _profile(profile: str) -> dict[str, TaskBudget]:
    if profile not in PROFILES:
        raise ConfigError(f"unknown benchmark profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


SUITES = ("tasks", "ablations", "curves", "full-data")


def build_suites(suites: list[str], profile: str, tasks: list[str] | None = None, encoder: str = DEFAULT_ENCODER) -> list[RunSpec]:
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ConfigError(f"unknown benchmark suite(s) {unknown}; known: {', '.join(SUITES)}")
    task_runs = task_suite(profile, tasks, encoder) if "tasks" in suites else []
    first_seed = [spec for spec in task_runs if spec.seed == BASE_SEED]
    ablations = ablation_suite(profile, encoder) if "ablations" in suites else []
    curves = curve_suite(profile, tasks, encoder) if "curves" in suites else []
    full_data = full_data_suite(tasks, encoder) if "full-data" in suites else []
    return first_seed + ablations + [spec for spec in task_runs if spec.seed != BASE_SEED] + curves + full_data
