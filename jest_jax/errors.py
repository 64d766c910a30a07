"""The error a run stops with when it cannot go on (shared by the trainer and
the checkpoint code, which the trainer imports)."""


class TrainingError(RuntimeError):
  """The run cannot go on; the message names the cause and the fix."""
