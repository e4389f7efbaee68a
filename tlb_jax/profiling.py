"""Where a compiled step's time goes: a `jax.profiler` trace of it, summed per XLA op.

Each op's self time (its span minus the spans of ops nested in it, such as a while loop's body)
is summed over the traced calls and grouped by

  phase: 'forward' or 'backward' (the op's source is under `transpose(...)`), and whether it
         runs inside a loop (`.../while/...`: the chunk scan, or an RNG loop inside it);
  kind:  'matmul' (dots and convolutions, fused or not), 'dropout' (ops under a Dropout layer:
         drawing the random bits, applying the mask and its gradient) or 'other' (elementwise,
         reductions, copies). Ops without source metadata (fusions and copies XLA creates,
         buffer fills) form their own phase.

The threads' time between ops is the phase 'between ops': right after an Eigen matmul (that
matmul's own work, which its traced span leaves out) or other (waiting).

On CPU, XLA records per-op spans only with `--xla_cpu_enable_xprof_traceme=true` in XLA_FLAGS,
set before the backend starts (`enable_cpu_op_tracing`). A traced step runs ~1.25x as long as
an untraced one on this project's CPU, so the shares, not the absolute times, are the result;
time steps without tracing (the flag alone, with no trace running, costs nothing measurable).
"""

import collections
import glob
import os
import re

import jax

CPU_OP_TRACING_FLAG = '--xla_cpu_enable_xprof_traceme=true'
# Spans of the runtime itself (executor, thread pool, Python), not of HLO ops.
RUNTIME_SPAN_PREFIXES = ('ThunkExecutor', 'SlinkyThreadPool', '$', 'Pjit', 'PjRt', 'TfrtCpu')
BETWEEN_OPS = 'between ops'  # the breakdown's phase of the threads' time between ops
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*$')
_MATMUL_OP = re.compile(r' (dot|convolution)\(')  # an HLO line computing a dot or convolution
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$')


def enable_cpu_op_tracing() -> None:
  """Adds the per-op tracing flag to XLA_FLAGS; call before any computation runs."""
  flags = os.environ.get('XLA_FLAGS', '')
  if CPU_OP_TRACING_FLAG not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {CPU_OP_TRACING_FLAG}'.strip()


def capture(run_step, num_steps: int, log_dir: str) -> str:
  """Traces `num_steps` calls of `run_step()` (which must block) into `log_dir`.

  Returns the path of the trace's `.xplane.pb`, which TensorBoard's profile plugin (or xprof)
  opens.
  """
  with jax.profiler.trace(log_dir):
    for _ in range(num_steps):
      run_step()
  paths = sorted(glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise RuntimeError(f'jax.profiler wrote no .xplane.pb under {log_dir}')
  return paths[-1]


def read_trace(xplane_path: str):
  """The XSpace protobuf of a `.xplane.pb` trace (`capture`'s), for `self_times_ms` and
  `idle_times_ms`."""
  # TensorFlow ships the XPlane protobuf; it is already a dependency (TFDS).
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(xplane_path, 'rb') as f:
    space.ParseFromString(f.read())
  return space


def self_times_ms(trace, num_steps: int) -> dict[str, float]:
  """Per-op self time in ms per step of a `read_trace` XSpace: {span name: ms}, runtime spans
  excluded."""
  totals = collections.Counter()
  for plane in trace.planes:
    for line in plane.lines:
      totals.update(self_times_of_spans(
          (e.offset_ps, e.duration_ps, plane.event_metadata[e.metadata_id].name)
          for e in line.events))
  return {name: ps / 1e9 / num_steps for name, ps in totals.items()
          if not name.startswith(RUNTIME_SPAN_PREFIXES)}


def idle_times_ms(trace, hlo_text: str, num_steps: int) -> dict[str, float]:
  """Per step of a `read_trace` XSpace, summed over the threads that run the step, the time
  each spends between its first and last op outside any op: {'after an Eigen matmul': ms,
  'other': ms}. Threads that run the step are those busy with ops for at least a quarter of
  that time (the runtime's other threads start a few ops each and would add the whole trace as
  idle).

  XLA:CPU runs the dots and convolutions it does not hand to YNNPACK with Eigen, whose work goes
  on after the op's traced span ends: the gap right after such an op is its work, not waiting
  (making those matmuls cheaper shortened those gaps and the step by as much).
  """
  op_names, eigen_ops = set(), set()
  for name, line in _instruction_lines(hlo_text):
    op_names.add(name)
    if _MATMUL_OP.search(line):
      eigen_ops.add(name)
  idle = collections.Counter()
  for plane in trace.planes:
    for line in plane.lines:
      named = ((e, plane.event_metadata[e.metadata_id].name) for e in line.events)
      spans = sorted((e.offset_ps, e.offset_ps + e.duration_ps, name) for e, name in named
                     if name in op_names)
      gaps = gaps_between_spans(spans, eigen_ops)
      if spans and sum(gaps.values()) <= 0.75 * (max(end for _, end, _ in spans) - spans[0][0]):
        idle.update(gaps)
  return {kind: ps / 1e9 / num_steps for kind, ps in idle.items()}


def gaps_between_spans(spans, eigen_ops) -> collections.Counter:
  """{'after an Eigen matmul' or 'other': summed gaps} of one thread's sorted (start, end, name)
  op spans, which may nest; a gap belongs to the op that ended last before it."""
  gaps = collections.Counter()
  if not spans:
    return gaps
  _, covered_until, last = spans[0]
  for start, end, name in spans[1:]:
    if start > covered_until:
      gaps['after an Eigen matmul' if last in eigen_ops else 'other'] += start - covered_until
    if end >= covered_until:
      covered_until, last = end, name
  return gaps


def self_times_of_spans(spans) -> collections.Counter:
  """{name: summed self time} of one thread's (start, duration, name) spans, which nest."""
  totals = collections.Counter()
  open_spans = []  # [end, name, start, time of directly nested spans], outermost first

  def close(span):
    end, name, start, nested = span
    totals[name] += (end - start) - nested
    if open_spans:
      open_spans[-1][3] += end - start

  for start, duration, name in sorted(spans, key=lambda s: (s[0], -s[1])):
    while open_spans and open_spans[-1][0] <= start:
      close(open_spans.pop())
    open_spans.append([start + duration, name, start, 0])
  while open_spans:
    close(open_spans.pop())
  return totals


def _instruction_lines(hlo_text: str):
  """(instruction name, its line) of every instruction of compiled HLO text."""
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      yield match.group(1), line


def _source(line: str) -> str:
  """The JAX source path (`op_name` metadata) of an HLO instruction's line, or ''."""
  source = re.search(r'op_name="([^"]*)"', line)
  return source.group(1) if source else ''


def classify_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (phase, kind)} for every instruction of compiled HLO text."""
  matmul_computations = set()
  computation = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
    elif computation and _MATMUL_OP.search(line):
      matmul_computations.add(computation)
  ops = {}
  for name, line in _instruction_lines(hlo_text):
    source = _source(line)
    called = re.search(r'calls=%?([\w.\-]+)', line)
    if _MATMUL_OP.search(line) or (called and called.group(1) in matmul_computations):
      kind = 'matmul'
    elif re.search(r'/Dropout[^/]*/', source):
      kind = 'dropout'
    else:
      kind = 'other'
    if not source:
      phase = 'no source metadata (XLA-made fusions, copies, fills)'
    else:
      phase = 'backward' if 'transpose(' in source else 'forward'
      phase += ', in a loop' if '/while/' in source else ', outside loops'
    ops.setdefault(name, (phase, kind))
  return ops


def breakdown(op_ms: dict[str, float], hlo_text: str,
              idle_ms: dict[str, float] | None = None) -> list[dict]:
  """Rows {'phase', 'kind', 'ms', 'share'}, largest first; ops absent from the HLO are 'other'.

  `idle_ms` (`idle_times_ms`) adds the threads' time between ops as phase `BETWEEN_OPS`, so that
  the shares are of all the threads' time from their first op to their last.
  """
  classes = classify_ops(hlo_text)
  groups = collections.Counter()
  for name, ms in op_ms.items():
    groups[classes.get(name, ('not in the step\'s HLO', 'other'))] += ms
  for kind, ms in (idle_ms or {}).items():
    groups[(BETWEEN_OPS, kind)] += ms
  total = sum(groups.values()) or 1.0
  return [{'phase': phase, 'kind': kind, 'ms': ms, 'share': ms / total}
          for (phase, kind), ms in groups.most_common()]


def top_ops(op_ms: dict[str, float], hlo_text: str, count: int = 15) -> list[dict]:
  """The `count` ops of the step's HLO with the most self time (`self_times_ms`), largest
  first: rows {'op', 'ms', 'share' (of all its ops' self time), 'phase', 'kind', 'source' (the
  JAX source path, its `pmap(...)/jit(...)/` prefix dropped)}."""
  sources = {name: _source(line) for name, line in _instruction_lines(hlo_text)}
  classes = classify_ops(hlo_text)
  in_step = {name: ms for name, ms in op_ms.items() if name in sources}
  total = sum(in_step.values()) or 1.0
  largest = sorted(in_step.items(), key=lambda item: -item[1])[:count]
  return [{'op': name, 'ms': ms, 'share': ms / total, 'phase': classes[name][0],
           'kind': classes[name][1],
           'source': re.sub(r'^(?:x?pmap\([^)]*\)/)?(?:jit\([^)]*\)/)*', '', sources[name])}
          for name, ms in largest]


def format_top_ops(rows: list[dict]) -> str:
  lines = ['| op | ms/step (traced) | share | kind | source |', '| --- | --- | --- | --- | --- |']
  lines += [f"| {r['op']} | {r['ms']:.2f} | {100 * r['share']:.1f}% | {r['kind']} | "
            f"{r['source'] or '-'} |" for r in rows]
  return '\n'.join(lines)


def format_breakdown(rows: list[dict]) -> str:
  lines = ['| phase | kind | ms/step (traced) | share |', '| --- | --- | --- | --- |']
  lines += [f"| {r['phase']} | {r['kind']} | {r['ms']:.1f} | {100 * r['share']:.0f}% |"
            for r in rows]
  return '\n'.join(lines)
