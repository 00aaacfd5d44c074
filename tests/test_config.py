"""The one declaration of a run's settings (training/config.py): every field has a kind,
a validation rule and a default there, the lists other modules use are derived from it,
and checking a configuration needs no kernel."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from charlstm.training import config as cfg

KINDS = (cfg.ARCHITECTURE_KIND, cfg.RESUMABLE_KIND, cfg.MACHINE_KIND, cfg.DERIVED_KIND,
         cfg.FIXED_KIND)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(cfg.TrainConfig)])
def test_every_setting_declares_its_kind_rule_and_default(name):
    field = cfg.TrainConfig.__dataclass_fields__[name]
    assert field.metadata["kind"] in KINDS
    assert callable(field.metadata["rule"])
    assert field.default is not dataclasses.MISSING
    assert field.metadata["rule"](field.default) is None, "the default breaks its own rule"


def test_the_lists_other_modules_use_are_the_declarations():
    from charlstm.training import budget, config_file

    assert cfg.ARCHITECTURE == ("cell", "hidden_size", "num_layers")
    assert set(budget.RECIPE_SETTINGS) == {name for name, recipe_value in
                                           budget.LONG.settings.items()}
    assert budget.MODEL_SIZE == ("hidden_size", "num_layers")
    assert not set(cfg.ARCHITECTURE) & set(cfg.RESUMABLE), "resume cannot reshape a model"
    assert set(config_file.EXTRA_KEYS.values()) == set(cfg.OPTION_OF)
    assert set(cfg.DERIVED) == {"lr_horizon_time", "ranks"}


def test_checking_a_configuration_imports_no_kernel():
    """No Numba is loaded: the modules of the kernels package it reaches (the cells'
    codes, the BLAS choice's parser, the environment check) import none."""
    code = ("import sys\n"
            "from charlstm.training.config import TrainConfig, validate\n"
            "validate(TrainConfig(blas='mkl/openblas', step_weights='panels/stored',"
            " precision='bfloat16', bf16_products='mkl'))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('numba', 'llvmlite'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
