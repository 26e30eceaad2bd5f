"""The polarization study (keras_mmoe.reproduce.polarization): aggregation, errors, a quick run."""

import json
import os

import numpy as np
import pytest

from keras_mmoe.cli.main import main
from keras_mmoe.reproduce import polarization


def _run(lr, experts, rate, seed, polarized, loss, fractions, effective, per_example, unused):
    return {
        "learning_rate": lr,
        "num_experts": experts,
        "expert_dropout_rate": rate,
        "seed": seed,
        "polarized": polarized,
        "test_loss": loss,
        "tasks": {
            f"y{k + 1}": {
                "max_weight_fraction": fractions[k],
                "effective_experts": effective[k],
                "effective_experts_per_example": per_example[k],
                "unused_experts": list(range(unused[k])),
                "max_weight_histogram": [0] * 20,
            }
            for k in range(2)
        },
    }


def test_summary_matches_numpy_on_hand_made_runs():
    runs = [
        _run(0.05, 8, 0.0, 0, True, 0.5, (0.9, 0.2), (2.0, 6.0), (1.1, 3.0), (3, 0)),
        _run(0.05, 8, 0.0, 1, False, 0.1, (0.1, 0.0), (7.0, 7.5), (4.0, 5.0), (0, 0)),
        _run(0.05, 8, 0.1, 0, False, 0.3, (0.4, 0.1), (5.0, 6.0), (2.0, 3.0), (1, 0)),
    ]
    rows = {r["expert_dropout_rate"]: r for r in polarization.summarize(runs)}
    plain = rows[0.0]
    assert (plain["runs"], plain["polarized_runs"], plain["polarized_share"]) == (2, 1, 0.5)
    assert plain["max_weight_fraction"] == pytest.approx(np.mean([0.9, 0.2, 0.1, 0.0]))
    assert plain["effective_experts"] == pytest.approx(np.mean([2.0, 6.0, 7.0, 7.5]))
    assert plain["effective_experts_per_example"] == pytest.approx(np.mean([1.1, 3.0, 4.0, 5.0]))
    assert plain["unused_experts"] == pytest.approx(0.75)
    assert plain["test_loss_mean"] == pytest.approx(0.3)
    assert plain["test_loss_std"] == pytest.approx(np.std([0.5, 0.1], ddof=1))
    assert rows[0.1]["runs"] == 1 and rows[0.1]["test_loss_std"] == 0.0
    table = polarization.to_markdown(polarization.summarize(runs))
    assert table.count("\n| 0.05 | 8 |") == 2 and "| 1 / 2 |" in table


@pytest.mark.parametrize(
    "text, message",
    [("0.05", "LEARNING_RATE:NUM_EXPERTS"), ("x:8", "LEARNING_RATE:NUM_EXPERTS"), ("0:8", "learning rate"),
     ("0.05:1", "number of experts"), ("0.05:8:-1", "shared bottom"), ("1:2:3:4", "LEARNING_RATE")],
)
def test_parse_setting_errors_name_the_value(text, message):
    with pytest.raises(ValueError, match=message) as error:
        polarization.parse_setting(text)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize(
    "argv, message",
    [(["--rates", "1.0"], "argument --rates: must be a float in [0, 1), received 1.0"),
     (["--seeds", "0"], "argument --seeds: must be a positive integer, received 0"),
     (["--settings", "fast:8"], "argument --settings: `--settings` entries must look like LEARNING_RATE:NUM_EXPERTS")],
)
def test_cli_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "polarization", "--out-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_quick_study_writes_tables_and_plots(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["reproduce", "polarization", "--quick", "--settings", "0.05:4", "--out-dir", str(out)])
    assert code == 0
    record = json.loads((out / "polarization.json").read_text())
    assert len(record["runs"]) == 4  # 1 setting x 2 rates x 2 seeds
    for run in record["runs"]:
        assert run["num_experts"] == 4 and run["expert_dropout_rate"] in (0.0, 0.1)
        for stats in run["tasks"].values():
            assert 0.0 <= stats["max_weight_fraction"] <= 1.0
            assert 1.0 <= stats["effective_experts"] <= 4.0 + 1e-6
            assert sum(stats["max_weight_histogram"]) == 400  # every held-out example counted once
            assert stats["test_mse"] > 0
            assert stats["polarized"] == (stats["max_weight_fraction"] > 0.5)
    assert [r["runs"] for r in record["summary"]] == [2, 2]
    markdown = (out / "polarization.md").read_text()
    assert markdown.startswith("| learning rate |")
    assert "Command: `keras-mmoe reproduce polarization --settings 0.05:4 --quick`" in markdown
    for png in ("polarization_rates.png", "polarization_max_weight.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "wrote" in capsys.readouterr().err
    assert os.listdir(out)
