"""Errors a user can fix. The CLI prints their message as one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's input or files; the message names it and the fix."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, or not charlstm's."""


class AnotherRankFailed(Exception):
    """In a run over MPI ranks: the error that rank 0 reports for the whole job (this
    rank exits with the same status, saying nothing)."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


class UsageProblem(UserError):
    """Options that cannot run together (a cosine schedule with no horizon, a resume with
    no budget left); the command line exits with 2, as for any usage error."""
