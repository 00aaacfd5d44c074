"""charlstm: character-level LSTM, GRU and RNN language models trained from the command line."""

__version__ = "0.1.0"

# Version of the checkpoint layout; bumped whenever a key changes meaning.
CHECKPOINT_FORMAT = 2
