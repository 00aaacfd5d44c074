"""The benchmark's FLOP accounting agrees with the products a step really runs, and its
quality comparison trains by the recipe it names."""
import pytest

from charlstm.tools.bench import CONFIGS, flops_per_char, quality_spec, step_gemm_shapes
from charlstm.training.budget import recipe_for
from charlstm.training.config import TrainConfig
from charlstm.training.loop import prepare_data

from conftest import make_text


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gemm_shapes_add_up_to_the_documented_flops(name):
    spec = CONFIGS[name]
    V = 65
    T, B, H, L = spec["seq_len"], spec["batch_size"], spec["hidden_size"], spec["num_layers"]
    total = sum(2 * m * k * n * count for m, k, n, count in step_gemm_shapes(spec["cell"], H, L, V, T, B))
    documented = flops_per_char(spec["cell"], H, L, V) * T * B
    # The documented count says "backward about twice the forward"; the step's products
    # match it up to the decoder's and layer 0's terms.
    assert total == pytest.approx(documented, rel=0.1)


@pytest.mark.parametrize("seconds", [180.0, 300.0, 1800.0])
def test_quality_budget_recipe_is_what_train_time_picks_for_the_text(tmp_path, seconds):
    """`bench --quality` (recipe 'budget') trains the configuration's model with the rate,
    cosine decay and dropout that `train --time` takes from the budget table for this text
    and budget, decaying over the bench's seconds; 'constant' is the configuration."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20_000))
    spec = quality_spec("S", "budget", str(corpus), seconds)
    train_chars = len(prepare_data(TrainConfig(corpus=(str(corpus),), **CONFIGS["S"])).train_ids)
    recipe = recipe_for(train_chars, seconds).settings
    for name in ("cell", "hidden_size", "num_layers", "seq_len", "batch_size"):
        assert spec[name] == CONFIGS["S"][name]
    for name in ("lr", "lr_schedule", "lr_min", "dropout"):
        assert spec[name] == recipe[name]
    assert spec["lr_schedule"] == "cosine" and spec["dropout"] > 0
    assert spec["lr_horizon_time"] == seconds
    TrainConfig(**spec)  # a valid run
    assert quality_spec("S", "constant", str(corpus), seconds) == CONFIGS["S"]
    with pytest.raises(ValueError, match="unknown quality recipe"):
        quality_spec("S", "cosine", str(corpus), seconds)
