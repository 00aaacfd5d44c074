"""The benchmark's FLOP accounting agrees with the products a step really runs."""
import pytest

from charlstm.bench import CONFIGS, flops_per_char, step_gemm_shapes


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
