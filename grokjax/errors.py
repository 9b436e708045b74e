"""The one exception type for user mistakes: the CLI prints it as one line and exits with status 2."""


class UserError(Exception):
    """A mistake in what the user asked for (a bad key, value, file or directory).

    The message is a single line that names the bad value and what would be accepted.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
