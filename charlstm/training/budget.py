"""Defaults chosen for a time budget: what to train when the user gives only --time.

A run with a --time budget and no other (no --steps, no --epochs) whose model size the
user left unset takes its model, batch, learning rate, schedule and dropout from
BUDGET_TABLE, by the size of its training text and the length of its budget. Every
setting the user did give (on the command line or in --config's file) wins over the
table. The table's rows were chosen from candidate recipes trained for the same --time
on this project's machines (benchmarks/budget_recipes.py; the curves and the CPU are in
docs/QUALITY.md): the longer the budget relative to the text, the larger the model and
the stronger the dropout that pays, and a cosine decay over the budget beats a constant
rate at every budget measured.
"""
from __future__ import annotations

from dataclasses import dataclass

from charlstm.training.config import ARCHITECTURE, BUDGET_FILLED, TrainConfig, format_duration

# The settings a recipe may choose: the model's size and how it is trained. Anything
# else (the cell, the corpus, the cadence, the BLAS) stays the user's or the default.
RECIPE_SETTINGS = BUDGET_FILLED
# The settings whose presence means the user chose the model: then no recipe applies.
MODEL_SIZE = tuple(name for name in ARCHITECTURE if name in BUDGET_FILLED)


@dataclass(frozen=True)
class Recipe:
    name: str
    settings: dict  # TrainConfig field -> value, for every name of RECIPE_SETTINGS
    measured: str  # where the recipe was measured, as docs/QUALITY.md reports it


def _recipe(name, measured, hidden_size, num_layers, lr, dropout, lr_min=1e-4,
            batch_size=32, seq_len=64) -> Recipe:
    return Recipe(name, {"hidden_size": hidden_size, "num_layers": num_layers,
                         "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
                         "lr_schedule": "cosine", "lr_min": lr_min, "dropout": dropout},
                  measured)


# The more passes over the text a budget makes, the more dropout pays: 19 epochs of the
# built-in corpus in 3 minutes and 17 of tinyshakespeare in 5 take 0.25; 10 of
# tinyshakespeare in 3 minutes take 0.1 (0.25 lost there, by a loss spike early in the
# run). The best validation bpc each reached is beside it.
SHORT_SMALL_TEXT = _recipe("short, small text", "the built-in corpus, 3 minutes",
                           256, 2, 3e-3, 0.25)  # 1.656
SHORT = _recipe("short", "tinyshakespeare, 3 minutes", 256, 2, 3e-3, 0.1)  # 2.115
MEDIUM = _recipe("medium", "tinyshakespeare, 5 minutes", 256, 2, 3e-3, 0.25)  # 2.111
LONG = _recipe("long", "tinyshakespeare, 30 minutes", 512, 2, 2e-3, 0.25)  # 2.084

# (training characters at most, budget seconds at most, recipe): the first row that
# holds both the text's size and the budget applies. 650,000 lies between the two texts
# measured (418,544 and 1,003,855 training characters), 4 minutes between the budgets.
BUDGET_TABLE = (
    (650_000, 10 * 60, SHORT_SMALL_TEXT),
    (float("inf"), 4 * 60, SHORT),
    (float("inf"), 10 * 60, MEDIUM),
    (float("inf"), float("inf"), LONG),
)


def recipe_for(train_chars: int, seconds: float) -> Recipe:
    """The recipe of BUDGET_TABLE for ``train_chars`` characters of training text and a
    budget of ``seconds`` (wall clock, the whole invocation)."""
    for most_chars, most_seconds, recipe in BUDGET_TABLE:
        if train_chars <= most_chars and seconds <= most_seconds:
            return recipe
    raise AssertionError("BUDGET_TABLE's last row holds every size and budget")


def wants_recipe(config: TrainConfig, given: set[str]) -> bool:
    """Whether a new run takes its defaults from the budget table: it has a --time
    budget and no other, and the user set no model size. ``given``: the TrainConfig
    fields the user set (command line or --config file)."""
    return (config.time_limit is not None and config.steps is None and config.epochs is None
            and not given & {*MODEL_SIZE, "steps", "epochs"})


def apply_recipe(config: TrainConfig, recipe: Recipe, given: set[str]) -> tuple[TrainConfig, dict]:
    """``config`` with the recipe's settings that the user did not give, and those
    settings (name -> value) as chosen."""
    chosen = {name: value for name, value in recipe.settings.items() if name not in given}
    if "lr" in given and "lr_min" in chosen:  # the floor keeps its ratio to the rate
        chosen["lr_min"] = config.lr * recipe.settings["lr_min"] / recipe.settings["lr"]
    if "batch_size" in chosen:
        chosen_threads = min(config.threads, chosen["batch_size"])
        if chosen_threads != config.threads and "threads" not in given:
            chosen["threads"] = chosen_threads
    return config.replace(**chosen), chosen


def describe(config: TrainConfig, recipe: Recipe, chosen: dict, train_chars: int) -> str:
    """One line: what the table chose for this budget and text (only what it chose), and
    why."""
    parts = []
    if "hidden_size" in chosen:  # with num_layers: either one given turns the table off
        parts.append(f"{config.cell} {config.num_layers}x{config.hidden_size}")
    if {"batch_size", "seq_len"} <= set(chosen):
        parts.append(f"batch {config.batch_size}x{config.seq_len}")
    elif "batch_size" in chosen:
        parts.append(f"batch size {config.batch_size}")
    elif "seq_len" in chosen:
        parts.append(f"sequence length {config.seq_len}")
    if "lr" in chosen:
        parts.append(f"lr {config.lr:.3g}")
    if "lr_schedule" in chosen:
        over = ("over the budget" if config.lr_horizon == 0
                else f"over {config.lr_horizon} steps")
        parts.append(f"{config.lr_schedule} schedule to {config.lr_min:.3g} {over}"
                     if config.lr_schedule == "cosine" else f"{config.lr_schedule} schedule")
    elif "lr_min" in chosen:
        parts.append(f"lr floor {config.lr_min:.3g}")
    if "dropout" in chosen:
        parts.append(f"dropout {config.dropout:g}")
    measured = (f"on {recipe.measured}" if config.cell == "lstm"
                else f"with lstm on {recipe.measured}")
    kept = "; options you gave win" if set(recipe.settings) - set(chosen) else ""
    return (f"--time {format_duration(config.time_limit)} on {train_chars:,} training "
            f"characters: chose {', '.join(parts)} (the budget table's '{recipe.name}' recipe, "
            f"measured {measured}: docs/QUALITY.md){kept}")
