"""One XLA host device per CPU core, by default, when training or evaluating on a CPU.

XLA:CPU spreads a device's matmuls over every core (Eigen's thread pool), but not all of its
other work, the elementwise fusions, reductions and copies; in the TLB's train step that other
work takes longer than the matmuls. With one host device per core, each running its matmuls on
one thread, pmap splits every batch across the devices and each core runs its share of all the
work: on a 2-core x86 CPU `configs/cifar10.py`'s train step ran 1.12-1.20x faster, its training
loop 1.14-1.17x and its eval step 1.36-1.43x (docs/performance.md). It is the same computation
(gradients are the mean over the devices' shares); the random draws of augmentation and dropout
depend on the device count, so resume a run with the count it started with (the trainer warns if
not).

`TLB_JAX_CPU_DEVICES=N` sets the count (1: one device on all cores, JAX's own default); a device
count already in XLA_FLAGS wins. Without either, the count is the most devices, at most one per
core, that the batch sizes divide into. The flags only shape JAX's CPU backend, so they do
nothing where the run's devices are GPUs or TPUs.

This module imports nothing heavy: it runs before JAX starts its backends.
"""

import os

ENVIRONMENT_VARIABLE = 'TLB_JAX_CPU_DEVICES'
DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
SINGLE_THREADED_MATMULS_FLAG = '--xla_cpu_multi_thread_eigen=false'


class DeviceCountError(ValueError):
  """TLB_JAX_CPU_DEVICES is not a positive whole number."""


def usable_cores() -> int:
  """The cores this process may run on (its affinity mask, as `taskset` sets it)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def largest_even_split(cores: int, batch_size: int, eval_batch_size: int,
                       microbatch_size: int = 0) -> int:
  """The most devices, at most `cores`, that both batch sizes divide into evenly, leaving each
  device's share of the training batch a multiple of `microbatch_size` (0: no micro-batches)."""
  for count in range(max(cores, 1), 1, -1):
    if batch_size % count or eval_batch_size % count:
      continue
    if microbatch_size and (batch_size // count) % microbatch_size:
      continue
    return count
  return 1


def requested_device_count(environ) -> int | None:
  """TLB_JAX_CPU_DEVICES as a number, or None when unset; DeviceCountError if malformed."""
  value = environ.get(ENVIRONMENT_VARIABLE, '').strip()
  if not value:
    return None
  if not value.isdigit() or int(value) < 1:
    raise DeviceCountError(f'{ENVIRONMENT_VARIABLE}={value!r} must be a whole number of host '
                           'devices, 1 or more (1: one device on all cores); or leave it unset '
                           'for one per core')
  return int(value)


def xla_flags_for(environ, cores: int, batch_size: int, eval_batch_size: int,
                  microbatch_size: int = 0) -> str | None:
  """The XLA_FLAGS that give the process its host devices, or None to leave them as they are
  (one device, or a device count the user already set)."""
  flags = environ.get('XLA_FLAGS', '')
  if DEVICE_COUNT_FLAG in flags:
    return None
  count = requested_device_count(environ)
  if count is None:
    count = largest_even_split(cores, batch_size, eval_batch_size, microbatch_size)
  if count == 1:
    return None
  return f'{flags} {DEVICE_COUNT_FLAG}={count} {SINGLE_THREADED_MATMULS_FLAG}'.strip()


def use_one_device_per_core(batch_size: int, eval_batch_size: int,
                            microbatch_size: int = 0) -> None:
  """Sets XLA_FLAGS for these batch sizes (see the module docstring). Call it before JAX runs
  anything: the flags are read once, when its first backend starts."""
  flags = xla_flags_for(os.environ, usable_cores(), batch_size, eval_batch_size,
                        microbatch_size)
  if flags is not None:
    os.environ['XLA_FLAGS'] = flags
