"""Test setup: two host CPU devices, so every pmap path runs with more than one device; quick
XLA compiles, kept in a cache that main.py subprocesses share."""

import atexit
import os
import shutil
import sys
import tempfile

# Must be set before JAX is imported anywhere.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=2').strip()
# The tests compile a few hundred small programs and run each for milliseconds, so on a CPU most
# of the suite's time went to XLA optimising their kernels: LLVM's optimisation passes, and the
# fusion emitters' own. Without both, XLA builds the same HLO programs into plainer machine code,
# which compiles several times faster and runs slower (a train step of configs/smoke.py on a
# 2-core x86 CPU: 17 s -> 7 s of CPU time to compile, 35 -> 130 ms a step of 128 images).
# Results can differ in the last bits, as between two CPUs. Inherited by main.py subprocesses;
# a value already in XLA_FLAGS wins.
for _flag in ('--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true',
              '--xla_cpu_use_fusion_emitters=false'):
  if _flag.split('=')[0] not in os.environ['XLA_FLAGS']:
    os.environ['XLA_FLAGS'] += ' ' + _flag
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# A persistent XLA compilation cache for this session, inherited by main.py subprocesses:
# programs compiled twice (a resumed run, a re-run of a finished one) compile once. Each
# pytest-xdist worker keeps its own below it, since JAX writes an entry without a lock while
# another process may read it.
_SESSION_CACHE = 'TLB_JAX_TESTS_XLA_CACHE'
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix='tlb_jax_tests_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.environ[_SESSION_CACHE] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
if ('PYTEST_XDIST_WORKER' in os.environ
    and os.environ['JAX_COMPILATION_CACHE_DIR'] == os.environ.get(_SESSION_CACHE)):
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(os.environ[_SESSION_CACHE],
                                                         os.environ['PYTEST_XDIST_WORKER'])

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
