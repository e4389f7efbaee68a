"""Which malloc serves this process, and why it matters on CPU.

XLA:CPU allocates every step's temporary buffers anew. glibc's malloc hands large blocks back
to the kernel on free, so each step page-faults hundreds of MB in again; tcmalloc (or jemalloc
with decay off) keeps them (docs/performance.md).
"""

TCMALLOC_HINT = (
    'CPU steps run faster with tcmalloc: apt install libtcmalloc-minimal4, then run with '
    'LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 (docs/performance.md)')


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
