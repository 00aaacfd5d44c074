"""charlstm: character-level LSTM, GRU and RNN language models, trained from the command
line or from Python.

    import charlstm
    run = charlstm.train("novel.txt", time="5m", out="runs/novel")
    model = charlstm.load("runs/novel")
    print(model.sample(400, prime="The ", seed=1))

``train``, ``resume``, ``load``, ``Model`` and ``Run`` are api.py's, imported when first
used, so that ``import charlstm`` stays light; ``UserError`` and its subclasses are the
errors a user can fix.
"""

__version__ = "0.1.0"

# Version of the checkpoint layout; bumped whenever a key changes meaning.
CHECKPOINT_FORMAT = 2

from charlstm.errors import CheckpointError, UsageProblem, UserError  # noqa: E402

_API = ("train", "resume", "load", "Model", "Run")
__all__ = [*_API, "UserError", "CheckpointError", "UsageProblem", "__version__"]


def __getattr__(name):
    if name in _API:
        from charlstm import api

        return getattr(api, name)
    raise AttributeError(f"module 'charlstm' has no attribute {name!r}")
