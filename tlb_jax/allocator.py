"""Which malloc serves this process, and tcmalloc by default on CPU.

XLA:CPU allocates every step's temporary buffers anew. glibc's malloc hands large blocks back
to the kernel on free, so each step page-faults hundreds of MB in again; tcmalloc keeps them
(docs/performance.md). So `main.py` and the benchmark start themselves again under tcmalloc
when it is installed and not yet loaded, as PyTorch's CPU launcher does with LD_PRELOAD.
`TLB_JAX_MALLOC=system` keeps the system malloc.

This module imports nothing heavy: it runs before JAX and TensorFlow are imported.
"""

import os
import sys

OPT_OUT = 'TLB_JAX_MALLOC'  # 'system': never switch to tcmalloc
# Set in the environment of the restarted process, so that a preload that did not take (the
# dynamic loader only warns) cannot restart it again.
RESTARTED = 'TLB_JAX_MALLOC_RESTARTED'
TCMALLOC_LIBRARIES = tuple(
    f'/usr/{lib}/libtcmalloc_minimal.so.4'
    for lib in ('lib/x86_64-linux-gnu', 'lib/aarch64-linux-gnu', 'lib64', 'lib'))
TCMALLOC_HINT = (
    'CPU steps run 1.2-1.3x faster with tcmalloc, which this machine lacks: apt install '
    'libtcmalloc-minimal4 (docs/performance.md)')


def preloaded_allocator(maps_path: str = '/proc/self/maps') -> str:
  """'tcmalloc', 'jemalloc' or 'system' (glibc, or a platform without /proc)."""
  try:
    with open(maps_path) as f:
      maps = f.read()
  except OSError:
    return 'system'
  for name in ('tcmalloc', 'jemalloc'):
    if f'lib{name}' in maps:
      return name
  return 'system'


def installed_tcmalloc(candidates: tuple[str, ...] = TCMALLOC_LIBRARIES) -> str | None:
  """The path of an installed tcmalloc library, or None."""
  return next((path for path in candidates if os.path.isfile(path)), None)


def tcmalloc_environment(environ: dict[str, str], maps_path: str = '/proc/self/maps',
                         candidates: tuple[str, ...] = TCMALLOC_LIBRARIES
                         ) -> dict[str, str] | None:
  """The environment to restart this process in under tcmalloc, or None to carry on as it is:
  opted out, restarted once already, another allocator already loaded, or none installed."""
  if (environ.get(OPT_OUT) == 'system' or RESTARTED in environ
      or preloaded_allocator(maps_path) != 'system'):
    return None
  library = installed_tcmalloc(candidates)
  if library is None:
    return None
  preload = ' '.join(filter(None, [library, environ.get('LD_PRELOAD', '')]))
  return {**environ, 'LD_PRELOAD': preload, RESTARTED: '1'}


def use_tcmalloc() -> None:
  """Replaces this process (same PID, arguments and environment) with one that preloads
  tcmalloc, when `tcmalloc_environment` says to; otherwise returns."""
  environment = tcmalloc_environment(dict(os.environ))
  if environment is None or not sys.platform.startswith('linux'):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv is the command as typed (`python -m tlb_jax.benchmark ...` keeps its -m).
  os.execve(sys.executable, sys.orig_argv, environment)
