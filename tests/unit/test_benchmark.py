"""The benchmark runner, its protocols, its report and plots: real runs on the tiny encoder."""

from __future__ import annotations

import dataclasses
import json

import pytest

from protolm.benchmark import protocols
from protolm.benchmark.report import render, verdict
from protolm.benchmark.runner import FAILED, OK, RUNNING, load_records, pending, run_specs
from protolm.benchmark.suites import (
    ABLATIONS,
    BASE_SEED,
    CPU_BUDGETS,
    TASK_ORDER,
    RunSpec,
    TaskBudget,
    build_suites,
    curve_suite,
    full_data_suite,
    task_suite,
)
from core.errors import ConfigError

TINY_BUDGET = TaskBudget(train_samples=48, epochs=1, seeds=1, test_samples=24, faithfulness_samples=4)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """The hub is unreachable here; make it fail at once instead of after its retries."""

    def unreachable(path, config, split):
        raise ConnectionError("offline")

    monkeypatch.setattr("protolm.data._hub_load", unreachable)
    protocols._full_splits.cache_clear()
    yield
    protocols._full_splits.cache_clear()


def test_task_suite_covers_the_eight_tasks_with_three_seeds_for_the_small_ones():
    specs = task_suite("cpu")
    assert {s.task for s in specs} == set(TASK_ORDER) == {"sst2", "sst5", "rte", "wnli", "mrpc", "imdb", "qnli", "mnli"}
    for task in ("rte", "wnli", "mrpc", "sst5"):
        assert len({s.seed for s in specs if s.task == task}) >= 3
    for task in TASK_ORDER:
        assert {s.architecture for s in specs if s.task == task} == {"protolm", "baseline"}
    assert len({s.run_id for s in specs}) == len(specs)


def test_every_task_first_seed_runs_before_any_second_seed_and_ablations_in_between():
    specs = build_suites(["tasks", "ablations"], "cpu")
    kinds = [("first" if s.seed == BASE_SEED else "later") if s.suite == "tasks" else "ablation" for s in specs]
    assert kinds == sorted(kinds, key=["first", "ablation", "later"].index)
    assert sum(k == "ablation" for k in kinds) == len(ABLATIONS)


def test_learning_curves_cover_three_tasks_at_growing_sizes_with_three_seeds_up_to_4000():
    specs = curve_suite("cpu")
    assert {s.task for s in specs} == {"sst2", "sst5", "mrpc"}
    assert len({s.run_id for s in specs}) == len(specs)
    sizes = lambda task: sorted({s.budget.train_samples or 10**9 for s in specs if s.task == task})
    assert sizes("sst2") == sizes("sst5") == [500, 1000, 2000, 4000, 8000] and sizes("mrpc")[-1] == 10**9
    for spec in specs:
        seeds = {s.seed for s in specs if (s.task, s.budget.train_samples, s.architecture) == (spec.task, spec.budget.train_samples, spec.architecture)}
        assert len(seeds) == (3 if spec.budget.train_samples and spec.budget.train_samples <= 4000 else 1)
        assert spec.budget.epochs == 1 and spec.budget.faithfulness_samples is None
        assert f"train={spec.budget.train_samples or 'all'}" in spec.run_id
    first_later = [s.seed == BASE_SEED for s in specs]
    assert first_later == sorted(first_later, reverse=True)  # every size at the first seed before any second seed
    assert [s.task for s in curve_suite("cpu", ["sst5", "rte"])][0] == "sst5" and "rte" not in {s.task for s in curve_suite("cpu", ["sst5", "rte"])}


def test_full_data_suite_trains_both_heads_on_every_example(tmp_path):
    specs = full_data_suite()
    assert [(s.task, s.architecture) for s in specs] == [("sst2", "protolm"), ("sst2", "baseline"), ("imdb", "protolm"), ("imdb", "baseline")]
    assert all(s.budget.train_samples is None and s.budget.epochs == 1 and s.run_id.endswith("__train=all__seed42") for s in specs)
    from protolm.benchmark.runner import train_config

    assert train_config(specs[0], tmp_path, None).optim.group_by_length  # hours on a CPU: the faster batches


def test_curve_table_and_plot_from_records(tmp_path):
    from protolm.benchmark.plots import learning_curves
    from protolm.benchmark.report import curve_table

    def record(architecture, size, seed, accuracy):
        budget = TaskBudget(size, 1, 3, None, None)
        return {"spec": RunSpec("curves", "sst2", architecture, seed, budget).as_dict(), "status": OK, "accuracy": accuracy,
                "data": {"train": {"name": "sst2:train", "examples": size}}}

    records = [record("protolm", 1000, 42, 0.80), record("protolm", 1000, 43, 0.82), record("baseline", 1000, 42, 0.82),
               record("baseline", 1000, 43, 0.82), record("protolm", 500, 42, 0.70), record("baseline", 500, 42, 0.74)]
    rows = curve_table(records).splitlines()[2:]
    assert rows[0].startswith("| sst2 | 500 | 1 / 1 | 70.0 | 74.0 | -4.0 | **no** |")
    assert rows[1].startswith("| sst2 | 1,000 | 2 / 2 | 81.0 ± 1.4 | 82.0 ± 0.0 | -1.0 | **no** |")
    close = curve_table([*records[:4], record("protolm", 1000, 44, 0.845)]).splitlines()[2]
    assert "| 3 / 2 | 82.2 ± 2.3 | 82.0 ± 0.0 | +0.2 | yes |" in close
    path = learning_curves(records, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_unknown_task_suite_or_profile_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown benchmark task"):
        task_suite("cpu", ["sst3"])
    with pytest.raises(ConfigError, match="unknown benchmark suite"):
        build_suites(["speed"], "cpu")
    with pytest.raises(ConfigError, match="unknown benchmark profile"):
        task_suite("huge")


def test_stand_in_protocols_when_the_training_split_is_missing(shared_data_dir):
    budget = CPU_BUDGETS["qnli"]
    qnli = protocols.load_task_data("qnli", budget, seed=1, data_dir=str(shared_data_dir))
    assert qnli.protocol.startswith("stand-in")
    assert qnli.train_available + qnli.test_available == 5463  # all of QNLI validation, split 80/20
    again = protocols.load_task_data("qnli", budget, seed=2, data_dir=str(shared_data_dir))
    assert again.splits.test.texts == qnli.splits.test.texts  # the test part does not move with the seed
    rows = lambda data: set(zip(data.texts, data.text_pairs))
    assert not rows(qnli.splits.test) & (rows(qnli.splits.train) | rows(again.splits.train))

    mnli = protocols.load_task_data("mnli", CPU_BUDGETS["mnli"], seed=1, data_dir=str(shared_data_dir))
    assert mnli.protocol.startswith("stand-in")
    assert mnli.splits.train.name == "mnli:validation_matched"
    assert mnli.splits.test.name == "mnli:validation_mismatched"


def test_standard_protocol_when_the_hub_supplies_the_training_split(shared_data_dir, monkeypatch):
    import datasets

    rows = {"question": ["who wrote it?", "where is it?"], "sentence": ["she wrote it.", "it is here."], "label": [0, 1]}
    monkeypatch.setattr("protolm.data._hub_load", lambda path, config, split: datasets.Dataset.from_dict(rows))
    qnli = protocols.load_task_data("qnli", CPU_BUDGETS["qnli"], seed=1, data_dir=str(shared_data_dir))
    assert qnli.protocol == protocols.STANDARD
    assert len(qnli.splits.train) == 2 and qnli.splits.test.name == "qnli:validation"


def test_sst5_is_tested_on_its_test_split_and_selects_on_validation(shared_data_dir):
    sst5 = protocols.load_task_data("sst5", TINY_BUDGET, seed=1, data_dir=str(shared_data_dir))
    assert sst5.splits.test.name == "sst5:test" and sst5.splits.validation.name == "sst5:validation"
    assert len(sst5.splits.train) == 48 and sst5.train_available == 8544


@pytest.fixture
def tiny_specs(tiny_encoder_dir):
    return [RunSpec("tasks", "wnli", architecture, BASE_SEED, TINY_BUDGET, str(tiny_encoder_dir))
            for architecture in ("protolm", "baseline")]


def test_runner_writes_one_record_per_run_and_resumes(tiny_specs, shared_data_dir, tmp_path):
    results = tmp_path / "results"
    counts = run_specs(tiny_specs, results, tmp_path / "runs", str(shared_data_dir))
    assert counts == {OK: 2, FAILED: 0}
    records = {r["spec"]["architecture"]: r for r in load_records(results)}
    for architecture, record in records.items():
        assert record["status"] == OK
        assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["macro_f1"] <= 1.0
        assert record["data"]["train"] == {"name": "wnli:train", "examples": 48, "available": 635}
        assert record["data"]["test"]["examples"] == 24
        assert record["settings"]["model"]["architecture"] == architecture
        assert record["hardware"]["cpu_cores"] >= 1 and record["training_seconds"] > 0
        assert record["spec"]["seed"] == BASE_SEED and record["protocol"] == protocols.STANDARD
    assert set(records["protolm"]["faithfulness"]["comprehensiveness"]) == {"attention", "random"}
    assert set(records["baseline"]["faithfulness"]["comprehensiveness"]) == {"gradient_x_input", "random"}
    assert records["protolm"]["prototypes"]["prototypes"] > 0
    assert not (tmp_path / "runs" / tiny_specs[0].run_id).exists()  # model directories are not kept

    assert pending(tiny_specs, results, retry_failed=True) == []
    assert run_specs(tiny_specs, results, tmp_path / "runs", str(shared_data_dir)) == {OK: 0, FAILED: 0}


def test_interrupted_and_changed_runs_are_run_again(tiny_specs, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    interrupted, changed = tiny_specs
    (results / f"{interrupted.run_id}.json").write_text(json.dumps({"spec": interrupted.as_dict(), "status": RUNNING}))
    other_budget = dataclasses.replace(changed, budget=dataclasses.replace(TINY_BUDGET, epochs=2))
    (results / f"{changed.run_id}.json").write_text(json.dumps({"spec": other_budget.as_dict(), "status": OK}))
    assert pending(tiny_specs, results, retry_failed=False) == tiny_specs


def test_a_crashed_run_is_recorded_and_the_suite_goes_on(tiny_specs, shared_data_dir, tmp_path):
    broken = dataclasses.replace(tiny_specs[0], encoder=str(tmp_path / "no-such-encoder"))
    results = tmp_path / "results"
    counts = run_specs([broken, tiny_specs[1]], results, tmp_path / "runs", str(shared_data_dir))
    assert counts == {OK: 1, FAILED: 1}
    record = json.loads((results / f"{broken.run_id}.json").read_text())
    assert record["status"] == FAILED and "no-such-encoder" in record["error"] and "Traceback" in record["traceback"]
    assert pending([broken], results, retry_failed=False) == []
    assert pending([broken], results, retry_failed=True) == [broken]
    text = render(load_records(results))
    assert broken.run_id in text and "failed" in text


def test_report_and_plots_from_real_records(tiny_encoder_dir, tiny_specs, shared_data_dir, tmp_path):
    from protolm.benchmark.report import write_report

    budget = dataclasses.replace(TINY_BUDGET, faithfulness_samples=None)
    ablations = [RunSpec("ablations", "sst2", "protolm", BASE_SEED, budget, str(tiny_encoder_dir), group, label, overrides,
                         keep_model=group in ("default", "similarity"))
                 for group, label, overrides in (("default", "N=200", {}), ("prototypes", "N=2", {"num_prototypes": 2}),
                                                 ("prototypes", "N=10", {"num_prototypes": 10}),
                                                 ("similarity", "inverse", {"similarity": "inverse"}))]
    results = tmp_path / "results"
    assert run_specs([*tiny_specs, *ablations], results, tmp_path / "runs", str(shared_data_dir)) == {OK: 6, FAILED: 0}
    written = write_report(results, tmp_path / "tables.md", tmp_path / "plots")
    text = (tmp_path / "tables.md").read_text()
    wnli_row = next(line for line in text.splitlines() if line.startswith("| wnli |"))
    assert "48 of 635 × 1" in wnli_row and any(v in wnli_row for v in ("| win |", "| tie |", "| loss |", "| no signal"))
    assert "proto-lm: attention" in text and "baseline: gradient×input" in text
    assert "| prototypes | N=2 |" in text
    assert {p.name for p in written} == {"tables.md", "accuracy_vs_prototypes.png", "encodings_pca_cosine.png", "encodings_pca_inverse.png"}
    for path in written[1:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_report_says_no_signal_when_neither_model_beats_the_majority_class():
    from protolm.benchmark.report import accuracy_table

    def record(architecture, accuracy):
        spec = RunSpec("tasks", "rte", architecture, BASE_SEED, TINY_BUDGET).as_dict()
        return {"spec": spec, "status": OK, "protocol": protocols.STANDARD, "accuracy": accuracy, "macro_f1": accuracy,
                "confusion": [[60, 0], [40, 0]], "total_seconds": 60.0,
                "data": {"train": {"name": "rte:train", "examples": 48}, "test": {"name": "rte:validation", "examples": 100}}}

    chance = accuracy_table([record("protolm", 0.55), record("baseline", 0.6)])
    assert "no signal" in chance and "| 60.0 |" in chance  # majority class: 60 of 100
    learned = accuracy_table([record("protolm", 0.70), record("baseline", 0.75)])
    assert "| -5.0 |" in learned and "| loss |" in learned


def test_verdict_margin():
    assert verdict(1.0) == "win" and verdict(0.99) == "tie" and verdict(-0.99) == "tie" and verdict(-1.0) == "loss"


def test_push_is_measured_on_the_test_data_not_the_selection_split(tiny_encoder_dir, shared_data_dir, tmp_path):
    spec = RunSpec("ablations", "sst2", "protolm", BASE_SEED, dataclasses.replace(TINY_BUDGET, faithfulness_samples=None),
                   str(tiny_encoder_dir), "push", "with push", {"push": True})
    run_specs([spec], tmp_path / "results", tmp_path / "runs", str(shared_data_dir))
    (record,) = load_records(tmp_path / "results")
    assert record["data"]["selection"]["examples"] == protocols.SELECTION_SAMPLES != record["data"]["test"]["examples"]
    assert record["projection"]["accuracy_after_push"] == pytest.approx(record["accuracy"])


def test_a_specs_overrides_reach_the_model_or_the_optimiser(tmp_path):
    from protolm.benchmark.runner import train_config

    spec = RunSpec("ablations", "sst5", "protolm", BASE_SEED, TaskBudget(100, 1, 1), overrides={"classifier_scale": 0.3, "push_epochs": 30})
    config = train_config(spec, tmp_path, None)
    assert (config.model.classifier_scale, config.optim.push_epochs) == (0.3, 30)
