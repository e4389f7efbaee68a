#!/usr/bin/env bash
# Throughput checks for a GPU machine, in one command of under 8 minutes:
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget-s 400]
#   bash benchmarks/gpu_check.sh --dry-run   # CPU rehearsal: smoke config, batch 8, 2 steps
#
#   1. The benchmark's train and eval steps (tlb_jax.benchmark, timings only) of
#      configs/cifar10.py and configs/cifar10_48px.py in bfloat16 and float32 at batch 128, 512
#      and 2048.
#   2. The whole training loop on generated data (benchmark.loop_throughput: the input pipeline,
#      prefetching, the loop's reads of its metrics) against the same step timed alone.
#   3. With more than one GPU: pmap scaling, 128 images per device on 1 GPU and on all.
#
# Results go to DIR (default gpu_check_out/): summary.json (every item, in order: its figures,
# its error, or why it was skipped) and one JSON per item (step items as `python -m
# tlb_jax.benchmark --output` writes them). Items run most important first; one that would not
# end within the budget (--budget-s, default 400 s in all) is skipped and listed as such.
#
# The machine needs JAX, flax, optax and orbax-checkpoint. TensorFlow, TFDS, clu, ml_collections,
# PIL and matplotlib may be missing: for each one that does not import, this script writes a
# minimal stand-in into its own temporary directory, on PYTHONPATH for this script's Python only
# (ml_collections.ConfigDict and clu.metrics as far as tlb_jax uses them; the rest only names
# that modules import, which the measured code never calls). --hide-modules A,B rehearses a
# machine without those packages (stand-ins for them, ImportError for any other).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=gpu_check_out
BUDGET_S=400
DRY_RUN=0
HIDE=""
PYTHON=${PYTHON:-python3}

while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --budget-s) BUDGET_S=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --hide-modules) HIDE=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

TMP=$(mktemp -d -t gpu_check.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
SI=$TMP/standins
mkdir -p "$SI"

hidden() { [[ ",$HIDE," == *",$1,"* ]]; }

# --------------------------------------------------------------------------- stand-ins

anything_module() {  # a module whose every attribute is a do-nothing placeholder
  cat > "$1" <<'PY'
"""Stand-in written by benchmarks/gpu_check.sh: the package is not installed. Any attribute is
a placeholder that may appear in signatures; calling one raises."""


class _AnythingMeta(type):

  def __getattr__(cls, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return cls

  def __call__(cls, *args, **kwargs):
    raise RuntimeError(f'{__name__} is a stand-in of benchmarks/gpu_check.sh (not installed)')


class Anything(metaclass=_AnythingMeta):
  pass


def __getattr__(name):
  if name.startswith('__'):
    raise AttributeError(name)
  return Anything
PY
}

write_ml_collections() {
  mkdir -p "$SI/ml_collections"
  cat > "$SI/ml_collections/__init__.py" <<'PY'
"""Stand-in of ml_collections written by benchmarks/gpu_check.sh: ConfigDict as the configs and
tlb_jax use it (attributes and items, nested dicts, update, to_dict, lock/unlock)."""

from ml_collections.config_dict import ConfigDict  # noqa: F401
PY
  cat > "$SI/ml_collections/config_dict.py" <<'PY'
"""ConfigDict stand-in (see ml_collections/__init__.py)."""

import copy


class ConfigDict:

  def __init__(self, initial=None, type_safe=True):
    del type_safe
    object.__setattr__(self, '_fields', {})
    object.__setattr__(self, '_locked', False)
    for key, value in (initial or {}).items():
      self[key] = value

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    try:
      return self._fields[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value

  def __getitem__(self, key):
    return self._fields[key]

  def __setitem__(self, key, value):
    if self._locked and key not in self._fields:
      raise AttributeError(f'locked ConfigDict has no field {key!r}')
    if isinstance(value, dict):
      value = ConfigDict(value)
    self._fields[key] = value

  def __contains__(self, key):
    return key in self._fields

  def __iter__(self):
    return iter(self._fields)

  def __len__(self):
    return len(self._fields)

  def __eq__(self, other):
    return isinstance(other, ConfigDict) and self.to_dict() == other.to_dict()

  def __repr__(self):
    return f'ConfigDict({self.to_dict()!r})'

  def __deepcopy__(self, memo):
    result = ConfigDict(copy.deepcopy(self.to_dict(), memo))
    object.__setattr__(result, '_locked', self._locked)
    return result

  def get(self, key, default=None):
    return self._fields.get(key, default)

  def keys(self):
    return self._fields.keys()

  def values(self):
    return self._fields.values()

  def items(self):
    return self._fields.items()

  def update(self, *others, **kwargs):
    for other in (*others, kwargs):
      for key, value in other.items():
        if isinstance(self._fields.get(key), ConfigDict) and isinstance(value, (dict, ConfigDict)):
          self._fields[key].update(value)
        else:
          self[key] = value

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, ConfigDict) else v for k, v in self._fields.items()}

  def lock(self):
    object.__setattr__(self, '_locked', True)
    for value in self._fields.values():
      if isinstance(value, ConfigDict):
        value.lock()
    return self

  def unlock(self):
    object.__setattr__(self, '_locked', False)
    for value in self._fields.values():
      if isinstance(value, ConfigDict):
        value.unlock()
    return self


def placeholder(field_type, required=False):
  del field_type, required
  return None
PY
  cat > "$SI/ml_collections/config_flags.py" <<'PY'
"""config_flags stand-in (see ml_collections/__init__.py): defines nothing; the driver loads
configs itself."""


def DEFINE_config_file(*args, **kwargs):  # pylint: disable=invalid-name
  del args, kwargs
PY
}

write_clu() {
  mkdir -p "$SI/clu"
  : > "$SI/clu/__init__.py"
  for name in metric_writers parameter_overview periodic_actions; do
    anything_module "$SI/clu/$name.py"
  done
  cat > "$SI/clu/metrics.py" <<'PY'
"""Stand-in of clu.metrics written by benchmarks/gpu_check.sh: Metric, Average, Accuracy,
LastValue and Collection as tlb_jax uses them (from_output, gather_from_model_output inside
pmap, merge, empty, compute)."""

import dataclasses

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Metric:

  def reduce(self):
    """Merges the copies gathered over devices (the leading axis)."""
    return jax.tree.map(lambda x: x.sum(axis=0), self)

  @classmethod
  def from_output(cls, name):

    @flax.struct.dataclass
    class FromOutput(cls):

      @classmethod
      def from_model_output(klass, **kwargs):
        return super(FromOutput, klass).from_model_output(kwargs[name], mask=kwargs.get('mask'))

    return FromOutput


def _mask(values, mask):
  values = jnp.atleast_1d(values)
  mask = jnp.ones(values.shape[:1]) if mask is None else mask
  return values, mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))


@flax.struct.dataclass
class Average(Metric):
  total: jnp.ndarray
  count: jnp.ndarray

  @classmethod
  def empty(cls):
    return cls(total=jnp.array(0, jnp.float32), count=jnp.array(0, jnp.int32))

  @classmethod
  def from_model_output(cls, values, mask=None, **_):
    values, mask = _mask(values, mask)
    return cls(total=jnp.where(mask, values, 0).sum().astype(jnp.float32),
               count=jnp.broadcast_to(mask, values.shape).sum().astype(jnp.int32))

  def merge(self, other):
    return type(self)(total=self.total + other.total, count=self.count + other.count)

  def compute(self):
    return self.total / self.count


@flax.struct.dataclass
class Accuracy(Average):

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    correct = (logits.argmax(axis=-1) == labels).astype(jnp.float32)
    return super().from_model_output(correct, mask=mask)


@flax.struct.dataclass
class LastValue(Average):
  """The last merged value (averaged over devices)."""

  @classmethod
  def from_model_output(cls, value, mask=None, **_):
    count = (jnp.ones((), jnp.int32) if mask is None else mask.sum().astype(jnp.int32))
    return cls(total=(value * count).astype(jnp.float32), count=count)

  def merge(self, other):
    return other


@flax.struct.dataclass
class Collection:

  @classmethod
  def _metrics(cls):
    return {f.name: f.type for f in dataclasses.fields(cls)}

  @classmethod
  def empty(cls):
    return cls(**{name: metric.empty() for name, metric in cls._metrics().items()})

  @classmethod
  def single_from_model_output(cls, **kwargs):
    return cls(**{name: metric.from_model_output(**kwargs)
                  for name, metric in cls._metrics().items()})

  @classmethod
  def gather_from_model_output(cls, axis_name='batch', **kwargs):
    gathered = jax.lax.all_gather(cls.single_from_model_output(**kwargs), axis_name=axis_name)
    return cls(**{name: getattr(gathered, name).reduce() for name in cls._metrics()})

  def merge(self, other):
    return type(self)(**{name: getattr(self, name).merge(getattr(other, name))
                         for name in self._metrics()})

  def compute(self):
    return {name: getattr(self, name).compute() for name in self._metrics()}
PY
}

write_package_of_anything() {  # name [submodule paths...]
  local name=$1; shift
  mkdir -p "$SI/$name"
  anything_module "$SI/$name/__init__.py"
  for sub in "$@"; do
    mkdir -p "$(dirname "$SI/$name/$sub")"
    [[ -f "$(dirname "$SI/$name/$sub")/__init__.py" ]] || anything_module "$(dirname "$SI/$name/$sub")/__init__.py"
    anything_module "$SI/$name/$sub.py"
  done
}

STANDINS=()
for pkg in ml_collections clu tensorflow_datasets PIL matplotlib; do
  if hidden "$pkg" || ! "$PYTHON" -c "import $pkg" >/dev/null 2>&1; then
    case $pkg in
      ml_collections) write_ml_collections ;;
      clu) write_clu ;;
      tensorflow_datasets) write_package_of_anything tensorflow_datasets ;;
      PIL) write_package_of_anything PIL ;;
      matplotlib) write_package_of_anything matplotlib backends/backend_agg figure ;;
    esac
    STANDINS+=("$pkg")
  fi
done
STANDINS_CSV=$(IFS=,; echo "${STANDINS[*]:-}")
echo "stand-ins: ${STANDINS_CSV:-none}"

# ----------------------------------------------------------------------------- driver

cat > "$TMP/driver.py" <<'PY'
"""Runs the items of benchmarks/gpu_check.sh most important first, within a time budget."""

import argparse
import copy
import importlib
import importlib.abc
import json
import os
import sys
import time
import traceback

parser = argparse.ArgumentParser()
parser.add_argument('--out', required=True)
parser.add_argument('--budget_s', type=float, required=True)
parser.add_argument('--dry_run', action='store_true')
parser.add_argument('--standins', default='')
parser.add_argument('--hide', default='')
args = parser.parse_args()
START = time.monotonic()


class _Hidden(importlib.abc.MetaPathFinder):
  """Packages rehearsed as missing (--hide-modules) that have no stand-in."""

  def __init__(self, names):
    self.names = set(names)

  def find_spec(self, fullname, path, target=None):
    if fullname.split('.')[0] in self.names:
      raise ImportError(f'{fullname} is hidden by --hide-modules')
    return None


hidden = {n for n in args.hide.split(',') if n} - {n for n in args.standins.split(',') if n}
if hidden:
  sys.meta_path.insert(0, _Hidden(hidden))

import jax  # noqa: E402

from tlb_jax import benchmark  # noqa: E402

NUM_CLASSES = 10
if args.dry_run:
  CONFIGS, DTYPES, BATCHES = ['smoke'], ['float32'], [8]
  REPEATS, WARMUP, LOOP_STEPS, LOG_EVERY, PER_DEVICE = 2, 1, 2, 1, 4
else:
  CONFIGS, DTYPES, BATCHES = ['cifar10', 'cifar10_48px'], ['bfloat16', 'float32'], [128, 512, 2048]
  REPEATS, WARMUP, LOOP_STEPS, LOG_EVERY, PER_DEVICE = 20, 3, 300, 50, 128


def config_of(name, dtype, batch_size):
  config = copy.deepcopy(importlib.import_module(f'configs.{name}').get_config())
  config.unlock()
  config.dtype = dtype
  config.batch_size = config.eval_batch_size = batch_size
  return config


def run_step(name, dtype, batch_size):
  return benchmark.benchmark(config_of(name, dtype, batch_size), NUM_CLASSES, REPEATS, WARMUP,
                             count_flops=False)


def run_loop(name, dtype, batch_size):
  return benchmark.loop_throughput(config_of(name, dtype, batch_size), NUM_CLASSES, LOOP_STEPS,
                                   LOG_EVERY, REPEATS, WARMUP)


def run_scaling(name, dtype, per_device):
  counts = sorted({1, jax.local_device_count()})
  return {'rows': benchmark.pmap_scaling(config_of(name, dtype, per_device), NUM_CLASSES,
                                         per_device, counts, REPEATS, WARMUP)}


first = (CONFIGS[0], DTYPES[0], BATCHES[0])
items = [('step', *first), ('loop', *first)]
if jax.local_device_count() > 1:
  items.append(('scaling', CONFIGS[0], DTYPES[0], PER_DEVICE))
items += [('step', c, d, b) for d in DTYPES for c in CONFIGS for b in BATCHES
          if ('step', c, d, b) not in items]
if not args.dry_run:
  items += [('loop', CONFIGS[0], DTYPES[0], BATCHES[-1]), ('loop', CONFIGS[1], DTYPES[0], 512)]
RUNNERS = {'step': run_step, 'loop': run_loop, 'scaling': run_scaling}

summary = {
    'jax': jax.__version__, 'backend': jax.default_backend(),
    'devices': [str(d.device_kind) for d in jax.local_devices()],
    'dry_run': args.dry_run, 'standins': [n for n in args.standins.split(',') if n],
    'budget_s': args.budget_s, 'items': [],
}


def write_summary():
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)


took = {}  # kind -> the longest time an item of that kind took
for kind, name, dtype, batch in items:
  label = f'{kind}_{name}_{"bf16" if dtype == "bfloat16" else "f32"}_b{batch}'
  entry = {'item': label, 'kind': kind, 'config': f'configs/{name}.py', 'dtype': dtype,
           'batch_size': batch}
  elapsed = time.monotonic() - START
  expected = took.get(kind, 60.0)
  if elapsed + expected > args.budget_s:
    entry['skipped'] = f'budget: {elapsed:.0f} s used, about {expected:.0f} s needed'
    print(f'{label}: skipped ({entry["skipped"]})', flush=True)
  else:
    started = time.monotonic()
    try:
      result = RUNNERS[kind](name, dtype, batch)
      entry['result'] = result
      with open(os.path.join(args.out, f'{label}.json'), 'w') as f:
        json.dump(result, f, indent=2)
    except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory at 2048)
      entry['error'] = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ""}'
      traceback.print_exc()
    entry['seconds'] = time.monotonic() - started
    took[kind] = max(took.get(kind, 0.0), entry['seconds'])
    if 'result' in entry:
      r = entry['result']
      if kind == 'step':
        line = (f"train {r['train']['images_per_s']:.0f} img/s, "
                f"eval {r['eval']['images_per_s']:.0f} img/s")
      elif kind == 'loop':
        line = (f"loop {r['loop_images_per_s']:.0f} img/s = "
                f"{100 * r['loop_over_step']:.1f}% of the step's {r['step_images_per_s']:.0f}")
      else:
        line = ', '.join(f"{row['devices']} dev {row['images_per_s']:.0f} img/s "
                         f"({100 * row['efficiency']:.0f}%)" for row in r['rows'])
      print(f'{label}: {line} [{entry["seconds"]:.0f} s]', flush=True)
    else:
      print(f'{label}: error {entry["error"]}', flush=True)
  summary['items'].append(entry)
  write_summary()
summary['total_s'] = time.monotonic() - START
write_summary()
print(f'wrote {os.path.join(args.out, "summary.json")} in {summary["total_s"]:.0f} s')
failed = [e['item'] for e in summary['items'] if 'error' in e]
sys.exit(1 if failed else 0)
PY

DRY_FLAG=()
[[ $DRY_RUN == 1 ]] && DRY_FLAG=(--dry_run)
cd "$REPO"
# The driver stops starting items at the budget; the timeout only guards against a hang.
PYTHONPATH="$SI:$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout $((BUDGET_S + 60)) \
  "$PYTHON" "$TMP/driver.py" --out "$OUT" --budget_s "$BUDGET_S" \
  --standins "$STANDINS_CSV" --hide "$HIDE" "${DRY_FLAG[@]}"
