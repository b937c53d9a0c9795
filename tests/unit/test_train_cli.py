"""`protolm train / evaluate / explain` end to end on a user's CSV with a tiny encoder (fast)."""

import json

import pandas as pd
import pytest

from cli.main import main

POSITIVE = ["good", "great film", "lovely acting", "a joy", "superb", "wonderful story", "fun", "brilliant"]
NEGATIVE = ["bad", "awful film", "dull acting", "a bore", "terrible", "weak story", "tedious", "horrible"]


@pytest.fixture
def csv_files(tmp_path):
    rows = [{"review": t, "sentiment": "pos"} for t in POSITIVE] + [{"review": t, "sentiment": "neg"} for t in NEGATIVE]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    train, validation = tmp_path / "train.csv", tmp_path / "validation.csv"
    frame.iloc[:12].to_csv(train, index=False)
    frame.iloc[12:].to_csv(validation, index=False)
    return train, validation


def test_train_evaluate_explain_on_user_csv(csv_files, tiny_encoder_dir, tmp_path, capsys):
    train, validation = csv_files
    model_dir = tmp_path / "model"
    code = main([
        "--log-level", "WARNING", "train",
        "--train-file", str(train), "--validation-file", str(validation),
        "--text-column", "review", "--label-column", "sentiment",
        "--encoder", str(tiny_encoder_dir), "--num-prototypes", "4", "--epochs", "2", "--batch-size", "4",
        "--output-dir", str(model_dir), "--explain-text", "a lovely film",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy:" in out and "comprehensive" in out and "nearest prototypes" in out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "exemplars.json", "training.json", "evaluation.json"):
        assert (model_dir / name).is_file(), name
    summary = json.loads((model_dir / "training.json").read_text())
    assert summary["train"]["examples"] == 12 and len(summary["epoch_history"]) == 2
    assert json.loads((model_dir / "config.json").read_text())["label_names"] == ["neg", "pos"]
    assert not (model_dir / "checkpoints").exists()

    assert main(["evaluate", str(model_dir), "--json", "--faithfulness", "false"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 4 and report["label_names"] == ["neg", "pos"]

    assert main(["explain", str(model_dir), "what a superb story", "--colour", "never"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prediction: ") and "exemplar:" in out


def test_baseline_and_push(csv_files, tiny_encoder_dir, tmp_path, capsys):
    train, validation = csv_files
    common = ["--train-file", str(train), "--validation-file", str(validation), "--text-column", "review",
              "--label-column", "sentiment", "--encoder", str(tiny_encoder_dir), "--epochs", "1", "--faithfulness", "false"]
    assert main(["train", *common, "--architecture", "baseline", "--output-dir", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b" / "exemplars.json").exists()
    assert main(["train", *common, "--num-prototypes", "4", "--output-dir", str(tmp_path / "p")]) == 0  # push: the default
    projection = json.loads((tmp_path / "p" / "training.json").read_text())["projection"]
    assert set(projection) == {"accuracy_before_push", "accuracy_after_push", "largest_push_distance"}
    exemplars = json.loads((tmp_path / "p" / "exemplars.json").read_text())["exemplars"]
    assert projection["largest_push_distance"] > 0 and all(e["distance"] < 1e-5 for e in exemplars)  # push moved them onto examples
    assert main(["train", *common, "--num-prototypes", "4", "--push", "false", "--output-dir", str(tmp_path / "n")]) == 0
    assert not json.loads((tmp_path / "n" / "training.json").read_text())["projection"]


def test_data_too_small_for_the_configuration_warns_and_trains_quietly(tiny_encoder_dir, tmp_path, capsys, caplog):
    rows = [{"text": t, "label": "pos"} for t in POSITIVE[:3]] + [{"text": t, "label": "neg"} for t in NEGATIVE[:3]]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[:1] + rows[-1:]).to_csv(tmp_path / "validation.csv", index=False)
    caplog.set_level("WARNING", logger="protolm")
    assert main(["train", "--train-file", str(tmp_path / "train.csv"), "--validation-file", str(tmp_path / "validation.csv"),
                 "--encoder", str(tiny_encoder_dir), "--epochs", "1", "--faithfulness", "false", "--output-dir", str(tmp_path / "m")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("6 training examples for 200 prototypes") for w in warnings), warnings
    assert any(w.startswith("a validation set of 2 examples (under 50)") for w in warnings), warnings
    captured = capsys.readouterr()
    assert "{'loss'" not in captured.out + captured.err and "'eval_accuracy'" not in captured.out + captured.err


def test_data_errors_are_reported_cleanly(csv_files, tiny_encoder_dir, capsys):
    train, _ = csv_files
    code = main(["train", "--train-file", str(train), "--text-column", "missing", "--encoder", str(tiny_encoder_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing" in err and "review" in err
