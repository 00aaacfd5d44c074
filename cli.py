"""Run charlstm from a checkout without installing it: ``python cli.py COMMAND ...``.

The command line itself is charlstm/cli.py; an install provides it as ``charlstm``.
"""
from charlstm.cli import main

if __name__ == "__main__":
    main(prog_name="charlstm")
