"""The command line's own error: bad flags or input that a command reports in one line.

`rest_jax.cli.main` turns a `CommandError` (and the other packages' input errors, see
`cli.USER_ERRORS`) into `rest-jax NAME: message` on stderr and exit status 2; anything else
is a bug and keeps its traceback.
"""


class CommandError(Exception):
  """A flag or an input a command cannot use; the message names it and what was expected."""
