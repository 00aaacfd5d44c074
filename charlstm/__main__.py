"""``python -m charlstm ...``: the command line, as the ``charlstm`` console script runs it."""
from charlstm.cli import main

main(prog_name="charlstm")
