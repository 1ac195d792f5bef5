"""One-line user errors: every tool reports a bad input as one `error: ...` line."""

ERROR_EXIT_CODE = 2


def first_line(error: Exception) -> str:
  """The first line of an exception's message (a TF op error's `message`), for one-line
  user errors."""
  text = getattr(error, 'message', None) or str(error)
  return text.strip().splitlines()[0] if text.strip() else type(error).__name__
