"""The one exception type that means "the user can fix this": the CLI prints it as one line."""


class UserError(Exception):
    """A mistake the user can correct (bad path, unknown voice, bad setting, missing weights...).

    The CLI turns it into a single line on stderr and exit code 1; everything else is a bug
    and keeps its traceback.
    """
