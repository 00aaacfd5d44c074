"""Defaults chosen for a --time budget (budget.py): which runs take them, that every
setting the user gave wins, and that the choice is told and saved with the run."""
import json

import pytest

from charlstm.training.budget import (BUDGET_TABLE, RECIPE_SETTINGS, apply_recipe, describe, recipe_for, wants_recipe)
from charlstm.training.config import (InvalidSetting, TrainConfig, format_duration, parse_duration, validate)
from charlstm.training.plan import MachineRequest, plan_new_run
from charlstm.training.run import start_run
from conftest import make_text, run_cli

FIXED_BLAS = ["--blas", "openblas", "--step-weights", "stored/stored"]


def test_every_row_of_the_table_sets_every_recipe_setting_and_the_last_row_holds_all():
    for _, _, recipe in BUDGET_TABLE:
        assert set(recipe.settings) == set(RECIPE_SETTINGS)
        TrainConfig(**recipe.settings)  # real settings
    most_chars, most_seconds, _ = BUDGET_TABLE[-1]
    assert most_chars == most_seconds == float("inf")


def test_recipe_follows_the_table_rows_in_order():
    for most_chars, most_seconds, recipe in BUDGET_TABLE:
        chars = 1000 if most_chars == float("inf") else most_chars
        seconds = 60 if most_seconds == float("inf") else most_seconds
        first = next(r for c, s, r in BUDGET_TABLE if chars <= c and seconds <= s)
        assert recipe_for(chars, seconds) is first
    # a longer budget never picks a smaller model
    sizes = [recipe_for(1_000_000, s).settings["hidden_size"] for s in (60, 180, 1800, 7200)]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("given, expected", [
    (set(), True),
    ({"lr", "dropout"}, True),
    ({"hidden_size"}, False),
    ({"num_layers"}, False),
])
def test_only_a_time_budget_without_a_model_size_takes_the_table(given, expected):
    assert wants_recipe(TrainConfig(time_limit=60.0), given) is expected
    assert not wants_recipe(TrainConfig(time_limit=60.0, steps=10), given)
    assert not wants_recipe(TrainConfig(time_limit=60.0, epochs=1.0), given)
    assert not wants_recipe(TrainConfig(), given)


def test_settings_the_user_gave_win_and_the_line_says_so():
    recipe = recipe_for(1_000_000, 180)
    config, chosen = apply_recipe(TrainConfig(time_limit=180.0, lr=1e-3), recipe, {"lr"})
    assert config.lr == 1e-3 and "lr" not in chosen
    assert config.lr_schedule == recipe.settings["lr_schedule"]
    assert config.hidden_size == chosen["hidden_size"] == recipe.settings["hidden_size"]
    line = describe(config, recipe, chosen, 1_000_000)
    assert "\n" not in line and "--time 3m" in line and "options you gave win" in line
    assert f"{config.num_layers}x{config.hidden_size}" in line and "docs/QUALITY.md" in line


def test_a_rate_of_ones_own_keeps_the_tables_ratio_of_floor_to_rate():
    recipe = recipe_for(1_000_000, 180)
    config, chosen = apply_recipe(TrainConfig(time_limit=180.0, lr=5e-5), recipe, {"lr"})
    ratio = recipe.settings["lr_min"] / recipe.settings["lr"]
    assert config.lr_min == pytest.approx(5e-5 * ratio) and config.lr_min < config.lr
    validate(config)


def test_a_cosine_floor_above_the_rate_is_refused():
    with pytest.raises(InvalidSetting, match="lr_min.*at most --lr"):
        validate(TrainConfig(lr=1e-4, lr_min=1e-3, lr_schedule="cosine"))
    validate(TrainConfig(lr=1e-4, lr_min=1e-3, lr_schedule="constant"))  # no floor then


def test_the_line_names_only_what_the_table_chose():
    recipe = recipe_for(1_000_000, 180)
    given = {"batch_size", "cell", "lr_min"}
    config, chosen = apply_recipe(TrainConfig(time_limit=180.0, batch_size=8, cell="gru",
                                              lr_min=0.0), recipe, given)
    line = describe(config, recipe, chosen, 1_000_000)
    assert "batch 8" not in line and "batch size" not in line and "sequence length 64" in line
    assert "cosine schedule to 0 " in line  # the user's floor, as the schedule uses it
    assert "measured with lstm on" in line and line.endswith("options you gave win")


def test_durations_print_as_they_are_read():
    for seconds in (2.5, 59, 60, 180, 1800, 5400, 7201):
        assert parse_duration(format_duration(seconds)) == seconds


def test_a_plan_takes_the_recipe_only_when_given_is_passed(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(30_000))
    settings = dict(corpus=(str(corpus),), time_limit=60.0, threads=1)
    request = MachineRequest(blas="openblas", step_weights="stored/stored")
    trainer, _ = start_run(plan_new_run(settings, None, request, tmp_path / "as-is"))
    trainer.lock.release()
    assert trainer.config.lr_schedule == "constant" and not trainer.notes
    recipe = recipe_for(len(trainer.data.train_ids), 60.0)
    trainer, _ = start_run(plan_new_run(dict(settings, dropout=0.0), {"dropout"}, request,
                                        tmp_path / "table"))
    trainer.lock.release()
    for name, value in recipe.settings.items():
        assert getattr(trainer.config, name) == (0.0 if name == "dropout" else value)
    assert (trainer.data.batches.B, trainer.data.batches.T) == (
        recipe.settings["batch_size"], recipe.settings["seq_len"])
    assert trainer.history[-1]["budget_recipe"] == recipe.name
    assert "dropout" not in trainer.history[-1]["chosen"]


def test_cli_time_alone_tells_the_choice_and_saves_it_in_the_run(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(30_000))
    out = tmp_path / "run"
    proc = run_cli("train", corpus, "--time", "3s", "--lr", "1e-3", *FIXED_BLAS,
                   "--quiet", "--out", out)
    notes = [line for line in proc.stderr.splitlines() if "budget table" in line]
    assert len(notes) == 1 and "options you gave win" in notes[0]
    info = json.loads(run_cli("info", out / "last.npz", "--json").stdout)
    recipe = recipe_for(int(0.9 * 30_000), 3.0)
    chosen = info["history"][0]["chosen"]
    assert info["history"][0]["budget_recipe"] == recipe.name and "lr" not in chosen
    assert info["config"]["lr"] == 1e-3
    # --time alone trains in bfloat16 where the CPU has its products (--precision auto)
    from charlstm.machine.cpu import resolve_precision

    assert info["config"]["precision"] == resolve_precision("auto")
    ratio = recipe.settings["lr_min"] / recipe.settings["lr"]
    assert info["config"]["lr_min"] == chosen["lr_min"] == pytest.approx(1e-3 * ratio)
    for name, value in chosen.items():
        if name != "lr_min":
            assert info["config"][name] == value == recipe.settings[name]
    # the run's file repeats the run: every setting is written out, so the table's
    # later rows cannot change a repeat
    toml = run_cli("info", out / "last.npz", "--toml").stdout
    assert f"hidden_size = {recipe.settings['hidden_size']}" in toml and 'time = "3s"' in toml
    text = run_cli("info", out).stdout
    assert f"budget table's '{recipe.name}' recipe chose" in text


@pytest.mark.alone
def test_cli_the_rate_reaches_its_floor_as_training_stops(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(60_000))
    out = tmp_path / "run"
    run_cli("train", corpus, "--time", "5s", "--hidden-size", "16", "--num-layers", "1",
            "--seq-len", "16", "--batch-size", "4", "--lr-schedule", "cosine", "--lr", "1e-2",
            "--lr-min", "1e-3", "--val-frac", "0.5", "--val-chars", "0", "--log-every", "1",
            *FIXED_BLAS, "--quiet", "--out", out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # a tenth of the way from the floor back to the rate: the last 20% of the cosine
    assert rows[-1]["lr"] < 1e-3 + 0.1 * (1e-2 - 1e-3)


@pytest.mark.parametrize("options", [["--hidden-size", "16", "--num-layers", "1"],
                                     ["--steps", "3"]])
def test_cli_a_model_size_or_another_budget_keeps_the_plain_defaults(tmp_path, options):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(30_000))
    out = tmp_path / "run"
    proc = run_cli("train", corpus, "--time", "3s", *options, "--seq-len", "16",
                   "--batch-size", "4", *FIXED_BLAS, "--quiet", "--out", out)
    assert "budget table" not in proc.stderr
    info = json.loads(run_cli("info", out / "last.npz", "--json").stdout)
    assert info["config"]["lr_schedule"] == "constant" and info["config"]["dropout"] == 0.0
    assert "budget_recipe" not in info["history"][0]
    assert info["config"]["precision"] == "float32"  # the default, without the table


def test_cli_a_setting_from_the_config_file_counts_as_given(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(30_000))
    run_file = tmp_path / "run.toml"
    run_file.write_text("[train]\ndropout = 0.0\nlr_schedule = \"constant\"\n")
    out = tmp_path / "run"
    run_cli("train", corpus, "--config", run_file, "--time", "3s", *FIXED_BLAS, "--quiet",
            "--out", out)
    info = json.loads(run_cli("info", out / "last.npz", "--json").stdout)
    assert info["config"]["dropout"] == 0.0 and info["config"]["lr_schedule"] == "constant"
    chosen = info["history"][0]["chosen"]
    assert "dropout" not in chosen and "lr_schedule" not in chosen and "hidden_size" in chosen
