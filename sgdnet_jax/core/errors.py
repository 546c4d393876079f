"""The one exception type for mistakes a user can fix: a config, a path, a permission, data.

Every command prints such an error as one line, `error: <what>, <where>, <what to do>`, and exits
2 (`main.py`); anything else is a bug and keeps its traceback. This module imports nothing, so
every layer of the package may raise it.
"""


class UserError(Exception):
  """A mistake in the user's input; the message says what, where and what to do."""


class ConfigError(UserError, ValueError):
  """A config file, argument or field that cannot be used as given."""
