"""What keeps a run recoverable: preemption, one writer, finiteness, OS faults.

Used by the trainer at five points (see `train.train_and_evaluate`):

  run start   `RunGuard(workdir)` as a context manager: takes the workdir lock,
              installs the SIGTERM / SIGINT handlers, turns workdir OS faults
              into one-line `WorkdirError`s, removes a workdir it created
              when the run fails before saving anything.
  step        `guard.record(metrics["train/finite"])` keeps the step's
              finiteness flag on the device (no host sync).
  log / save  `guard.check_finite(step, manager)` reads the kept flags (one
              host transfer, at steps that transfer anyway) and raises
              `NonFiniteError` naming the last good checkpoint.
  loop        `guard.should_stop(step)`: a signal arrived (all processes
              agree on the step); the loop saves and raises `Preempted`.

docs/design.md §9 describes the behaviour users see.
"""

import contextlib
import datetime
import difflib
import errno
import json
import os
import signal
import socket
import sys
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from jest_jax import selection
from jest_jax.errors import TrainingError

LOCK_NAME = "run.lock"  # Local disks: fcntl lock on this file.
LEASE_NAME = "run.lease"  # Object stores: JSON lease, renewed at each save.
LEASE_SECONDS = 15 * 60  # An unrenewed lease older than this is stale.
ROLLBACK_NAME = "rollback.json"  # The last `resume_step` rollback done.




class WorkdirError(TrainingError):
  """The workdir cannot be used; the message names the cause and the fix."""


class WorkdirBusy(WorkdirError):
  """Another run holds the workdir."""


class NonFiniteError(TrainingError):
  """Training produced a non-finite value; nothing after the last good
  checkpoint was saved."""


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, step, signum):
    super().__init__(f"stopped at step {step}, checkpoint saved; rerun the "
                     "same command to resume")
    self.step, self.signum = step, signum

  @property
  def exit_code(self):
    return 128 + self.signum  # What a shell reports for a signal.


def _is_local(path):
  return "://" not in os.fspath(path)


# ------------------------------------------------------------ OS faults --

_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of it is a file, not a directory",
    errno.EEXIST: "it exists and is not a directory",
}


def os_fault(exc):
  """The OSError with a known workdir errno in `exc`'s cause/context chain
  (orbax and the standard library wrap them), or None."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _FAULTS:
      return exc
    exc = exc.__cause__ or exc.__context__
  return None


def describe_os_fault(workdir, fault):
  where = fault.filename or workdir
  return (f"cannot write {where}: {_FAULTS[fault.errno]} "
          f"({errno.errorcode[fault.errno]}); free space or fix the "
          f"permissions, or pass another --workdir (checkpoints and metrics "
          f"already in {workdir} are kept)")


def make_workdir(workdir):
  """Creates `workdir` (and parents); returns whether it was created here."""
  path = epath.Path(workdir)
  if _is_local(workdir) and os.path.exists(workdir) and not os.path.isdir(
      workdir):
    raise WorkdirError(f"--workdir {workdir} is an existing file, not a "
                       "directory; pass a directory path")
  existed = path.exists()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    if e.errno in _FAULTS:
      raise WorkdirError(describe_os_fault(workdir, e)) from None
    raise
  return not existed


# ----------------------------------------------------------------- lock --


def _holder():
  return dict(host=socket.gethostname(), pid=os.getpid(),
              started=datetime.datetime.now().isoformat(timespec="seconds"),
              renewed=time.time())


def _busy(workdir, holder):
  return WorkdirBusy(
      f"workdir {workdir} is in use by another run (pid {holder.get('pid')} "
      f"on {holder.get('host')}, started {holder.get('started')}); wait for "
      "it to end or pass another --workdir")


class WorkdirLock:
  """One run per workdir.

  Local disks: an exclusive `fcntl.flock` on `WORKDIR/run.lock`, which also
  records the holder's host and PID. The kernel drops the lock when the
  process ends however it ends, so a killed run never leaves a stale lock.

  Object stores (`gs://...`) have no locks: `WORKDIR/run.lease` holds JSON
  `{host, pid, started, renewed}`; a lease renewed (at each checkpoint)
  within `LEASE_SECONDS` refuses a second run, an older one is taken over.
  Two runs started within the same second can both take a lease (no
  compare-and-swap through epath); the lease is a guard, not a mutex.
  """

  def __init__(self, workdir):
    self.workdir = workdir
    self._file = None
    self._lease = None

  def acquire(self):
    if _is_local(self.workdir):
      import fcntl  # pylint: disable=g-import-not-at-top
      path = os.path.join(self.workdir, LOCK_NAME)
      f = open(path, "a+")  # pylint: disable=consider-using-with
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        f.seek(0)
        try:
          holder = json.loads(f.read() or "{}")
        except ValueError:
          holder = {}
        f.close()
        raise _busy(self.workdir, holder) from None
      f.seek(0)
      f.truncate()
      f.write(json.dumps(_holder()))
      f.flush()
      self._file = f
    else:
      self._lease = epath.Path(self.workdir) / LEASE_NAME
      if self._lease.exists():
        try:
          holder = json.loads(self._lease.read_text())
        except ValueError:
          holder = {}
        if time.time() - holder.get("renewed", 0) < LEASE_SECONDS:
          raise _busy(self.workdir, holder)
      self.renew()

  def renew(self):
    if self._lease is not None:
      self._lease.write_text(json.dumps(_holder()))

  def release(self):
    if self._file is not None:
      self._file.close()  # Closing drops the flock; the file may stay.
      self._file = None
    if self._lease is not None:
      with contextlib.suppress(OSError):
        self._lease.unlink()
      self._lease = None


# ------------------------------------------------------------ preemption --


class _Signals:
  """SIGTERM / SIGINT -> a flag; a second signal ends the process at once."""

  def __init__(self, workdir, signals):
    self.workdir = workdir
    self.signals = signals
    self.received = None
    self._previous = {}

  def install(self):
    import threading  # pylint: disable=g-import-not-at-top
    if threading.current_thread() is not threading.main_thread():
      return  # Python takes signals on the main thread only.
    for signum in self.signals:
      self._previous[signum] = signal.signal(signum, self._handle)

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      sys.stderr.write(
          f"error: second {signal.Signals(signum).name}: exiting now without "
          f"a new checkpoint; rerun the same command to resume from the last "
          f"checkpoint in {self.workdir}\n")
      sys.stderr.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.received = signum
    logging.warning("%s received: finishing this step, then saving a "
                    "checkpoint (send it again to exit at once)",
                    signal.Signals(signum).name)


# ------------------------------------------------------------- the guard --


class RunGuard:
  """The run-wide guard; use as `with RunGuard(workdir) as guard:`.

  With several processes only process 0 holds the lock; every process
  learns whether it got it (one broadcast at the start). SIGTERM then goes
  through JAX's preemption service (`reached_preemption_sync_point`, which
  makes every process stop at the same step without a per-step collective);
  SIGINT is local and is shared at log steps (`share_stop`).
  """

  def __init__(self, workdir, *, handle_signals=True):
    self.workdir = workdir
    self.lead = jax.process_index() == 0
    self.multi = jax.process_count() > 1
    self._lock = WorkdirLock(workdir)
    self._created = False
    self._saved = False
    self._started = False
    self._flags = []  # Device bool scalars since the last check, in order.
    self.last_good_step = 0
    # JAX's preemption service (on by default in jax.distributed) watches
    # SIGTERM itself; without it SIGTERM is handled here like SIGINT.
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    self._service = self.multi and (
        distributed.global_state.preemption_sync_manager is not None)
    signals = ((signal.SIGINT,) if self._service
               else (signal.SIGINT, signal.SIGTERM))
    self._signals = _Signals(workdir, signals) if handle_signals else None
    self._stop_shared = False

  def __enter__(self):
    try:
      self._created = make_workdir(self.workdir)
      error = None
      if self.lead:
        try:
          self._lock.acquire()
        except WorkdirError as e:
          error = e
        except OSError as e:
          if e.errno not in _FAULTS:
            raise
          error = WorkdirError(describe_os_fault(self.workdir, e))
      if self.multi:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        failed = multihost_utils.broadcast_one_to_all(
            np.int32(error is not None))
        if failed and error is None:
          error = WorkdirError(f"process 0 could not take {self.workdir}; "
                               "see its error")
      if error is not None:
        raise error
    except WorkdirError:
      self._remove_if_created()
      raise
    if self._signals is not None:
      self._signals.install()
    return self

  def __exit__(self, exc_type, exc, tb):
    if self._signals is not None:
      self._signals.restore()
    self._lock.release()
    if exc is not None and not self._started:
      self._remove_if_created()
    if exc is not None and not isinstance(exc, (WorkdirError, Preempted,
                                                NonFiniteError)):
      fault = os_fault(exc)
      if fault is not None:
        raise WorkdirError(describe_os_fault(self.workdir, fault)) from None
    return False

  def _remove_if_created(self):
    """A run that failed before its first step leaves no workdir it created
    (nothing in it can be lost: it held only this run's lock and config)."""
    if self._created and self.lead:
      with contextlib.suppress(OSError):
        epath.Path(self.workdir).rmtree()

  # Finiteness: flags stay on the device until a step that syncs anyway.

  def record(self, step, finite_flag):
    self._started = True
    self._flags.append((step, finite_flag))

  def check_finite(self, step, kept_steps, lr):
    """Raises NonFiniteError if any step since the last check had a
    non-finite loss, gradient norm or scoring embedding."""
    if not self._flags:
      return
    values = jax.device_get([flag for _, flag in self._flags])
    bad = [s for (s, _), ok in zip(self._flags, values) if not bool(ok)]
    self._flags = []
    if not bad:
      return
    good = [s for s in kept_steps if s < bad[0]]
    if good:
      resume = (f"checkpoints kept: {', '.join(map(str, good))}; rerun with "
                f"--config.resume_step={good[-1]} (and a lower "
                f"--config.optim.lr, now {lr}, or other data) to go on from "
                f"step {good[-1]}; later checkpoints are deleted then")
    else:
      resume = (f"no checkpoint was saved before it; lower "
                f"--config.optim.lr (now {lr}) or check the data, and rerun")
    raise NonFiniteError(
        f"non-finite training loss, gradient or scoring embedding at step "
        f"{bad[0]} (checked at step {step}); nothing after it was saved; "
        f"{resume}")

  def saved(self):
    self._saved = True
    self._lock.renew()

  # Preemption.

  def should_stop(self, step):
    """Whether to save and stop after `step` (no host sync on one process;
    on several, JAX's preemption service agrees on the step)."""
    if self.multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return self._stop_shared or (
          self._service
          and multihost_utils.reached_preemption_sync_point(step))
    return self._signals is not None and self._signals.received is not None

  def share_stop(self):
    """Several processes: shares a signal caught here (SIGINT, or SIGTERM
    without the preemption service) at log steps, which all processes reach
    together."""
    if self.multi and self._signals is not None:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flags = multihost_utils.process_allgather(
          np.int32(self._signals.received is not None))
      self._stop_shared = bool(np.any(flags))

  def preempted(self, step):
    signum = (self._signals.received if self._signals is not None
              and self._signals.received else signal.SIGTERM)
    return Preempted(step, signum)


def step_finite(loss, grad_norm, learner=None, reference=None):
  """`bool[]` for the step outputs: loss, gradient norm and the scoring
  embeddings (`selection.Embeddings` or None) all finite. Jittable."""
  return selection.all_finite((loss, grad_norm, learner), reference)


# ------------------------------------------------------------- rollback --


def rollback(manager, workdir, resume_step):
  """The step to resume from, for `config.resume_step` (0: the latest).

  `resume_step=N` restores checkpoint N and deletes the later checkpoints
  (they hold the abandoned trajectory; orbax would otherwise resume from
  them, or skip saving below them); the metrics rows after N are dropped
  by the MetricWriter. `WORKDIR/rollback.json` records it, so rerunning the
  same command later (after a preemption) resumes from the latest
  checkpoint instead of rolling back again.
  """
  latest = manager.latest_step() or 0
  if not resume_step:
    return latest
  marker = epath.Path(workdir) / ROLLBACK_NAME
  if marker.exists() and json.loads(marker.read_text()).get(
      "resume_step") == resume_step:
    return latest
  steps = sorted(manager.all_steps())
  if resume_step not in steps:
    raise WorkdirError(
        f"config.resume_step={resume_step}: no such checkpoint in {workdir}; "
        f"checkpoints kept: {', '.join(map(str, steps)) or 'none'}")
  for step in steps:
    if step > resume_step:
      manager.delete(step)
  if jax.process_index() == 0:
    marker.write_text(json.dumps(dict(resume_step=resume_step,
                                      deleted=[s for s in steps
                                               if s > resume_step])))
  logging.warning("rolled back %s to step %d; deleted later checkpoints %s",
                  workdir, resume_step, [s for s in steps if s > resume_step])
  return resume_step


# --------------------------------------------------------- flag parsing --


def _config_error(exc, error_type):
  """The innermost `error_type` in the chain: ml_collections re-raises a
  config file's error as the same type with a traceback in its message."""
  found, seen = None, set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, error_type):
      found = exc
    exc = exc.__cause__ or exc.__context__
  return found


def _closest_key(key, config):
  """The known dotted key nearest to `key`: among the same parent's keys
  first (by spelling, or as an abbreviation: learning_rate -> lr), then
  among all keys."""
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    if not (hasattr(node, "items") and part in node):
      node = None
      break
    node = node[part]
  if node is not None and hasattr(node, "items"):
    prefix = "".join(f"{p}." for p in parents)
    initials = "".join(word[0] for word in leaf.split("_") if word)
    for sibling in node.keys():
      if len(initials) > 1 and sibling == initials:
        return prefix + sibling
    close = difflib.get_close_matches(leaf, list(node.keys()), n=1,
                                      cutoff=0.6)
    if close:
      return prefix + close[0]
  close = difflib.get_close_matches(key, _leaf_keys(config), n=1, cutoff=0.5)
  return close[0] if close else None


def _leaf_keys(config, prefix=""):
  keys = []
  for key, value in config.items():
    if hasattr(value, "items"):
      keys.extend(_leaf_keys(value, f"{prefix}{key}."))
    else:
      keys.append(f"{prefix}{key}")
  return keys


def unknown_override(config, argv, flag="config"):
  """One-line message for the first `--config.KEY=...` in `argv` that names
  no key of `config`, with the closest key; None if all are known."""
  prefix = f"--{flag}."
  for arg in argv:
    if not arg.startswith(prefix):
      continue
    key = arg[len(prefix):].partition("=")[0]
    node, ok = config, True
    for part in key.split("."):
      if hasattr(node, "items") and part in node:
        node = node[part]
      else:
        ok = False
        break
    if not ok:
      close = _closest_key(key, config)
      hint = f"; did you mean {prefix}{close}?" if close else ""
      return f"unknown config key {prefix}{key}{hint}"
  return None


def parse_flags(argv, config_error_type, load_config):
  """absl `flags_parser` with one-line errors: a config file's own error
  (`configs/jest.py:steps=ten`), an override of a type it cannot take
  (`--config.total_steps=ten`) or an unknown override key. Exits with
  status 2 and `error: ...` on stderr. `load_config("path.py:ARG")` loads
  the config named on the command line (to find the closest key)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = None
    config_error = _config_error(e, config_error_type)
    if config_error is not None:
      message = str(config_error)
    elif isinstance(e, (AttributeError, KeyError)):
      config_arg = next((a.partition("=")[2] for a in argv
                         if a.startswith("--config=")), None)
      if config_arg is None and "--config" in argv:
        config_arg = argv[argv.index("--config") + 1]
      try:
        message = unknown_override(load_config(config_arg), argv)
      except Exception:  # pylint: disable=broad-except
        message = None
      message = message or f"bad --config override: {e}"
    elif isinstance(e, flags.Error):
      message = str(e).splitlines()[0]
    else:
      raise
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)
