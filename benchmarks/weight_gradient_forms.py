"""Micro-benchmark: the chunk scan's weight gradients, chunk by chunk or as one batched matmul.

  python -m benchmarks.weight_gradient_forms            # configs/cifar10.py's shapes

Inside the chunk scan every dense layer of the cell gets one weight gradient per chunk,
x_c^T dy_c over the chunk's B * K rows (B * L for the slow stream's), summed over the C chunks.
Saved activations x (C, M, Din) and output gradients dy (C, M, Dout) of all chunks would give
the same sum as one matmul contracting over C * M rows. This times both forms, pmapped over the
local devices as the train step runs, for every dense layer of the cell's in-scan blocks at
once (the two fast-stream self-attention blocks after the hoisted ones, the two
cross-attention blocks and the slow update of `configs/cifar10.py`). The difference between
the two bounds what batching could save in the train step, which also reads x and dy back from
memory where the scan's backward finds them in cache.

  per_chunk: C matmuls of M rows each, summed (what the scan's backward computes);
  batched:   one matmul of C * M rows.

Each pair times the two back to back, in alternating order, the median of `--repeats` calls
each; compare them within a pair.
"""

import argparse

from tlb_jax import allocator

if __name__ == '__main__':
  allocator.use_tcmalloc()  # first: it starts the process again, which repeats what ran before

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from tlb_jax.benchmark import median_seconds


def per_chunk_weight_gradient(x, dy):
  """x (C, M, Din), dy (C, M, Dout) -> (Din, Dout): sum over c of x[c]^T dy[c]."""
  return sum(x[c].T @ dy[c] for c in range(x.shape[0]))


def batched_weight_gradient(x, dy):
  """As `per_chunk_weight_gradient`, as one matmul over the C * M rows."""
  return jnp.einsum('cmi,cmo->io', x, dy)


FORMS = {'per_chunk': per_chunk_weight_gradient, 'batched': batched_weight_gradient}


def cell_dense_layers(tokens: int, latents: int, embed: int, mlp_ratio: int,
                      self_blocks: int, cross_blocks: int) -> list[tuple[int, int, int]]:
  """(rows per batch element, Din, Dout) of every dense layer of the in-scan blocks.

  A fast-stream self-attention block: q/k/v and output projections and the MLP over the K
  tokens. A cross-attention block (fast queries over slow keys/values): queries, output and MLP
  over the tokens, keys/values over the L latents. The slow update (slow queries over fast
  keys/values): queries, output and MLP over the latents, keys/values over the tokens.
  """
  hidden = embed * mlp_ratio
  mlp = lambda rows: [(rows, embed, hidden), (rows, hidden, embed)]
  self_block = [(tokens, embed, 3 * embed), (tokens, embed, embed)] + mlp(tokens)
  cross_block = ([(tokens, embed, embed), (latents, embed, 2 * embed), (tokens, embed, embed)]
                 + mlp(tokens))
  slow_update = ([(latents, embed, embed), (tokens, embed, 2 * embed), (latents, embed, embed)]
                 + mlp(latents))
  return self_block * self_blocks + cross_block * cross_blocks + slow_update


def runner(form, layers: list[tuple[int, int, int]], batch_size: int, chunks: int):
  """A blocking zero-argument callable: `form` for every layer, pmapped, on fixed inputs."""
  devices = jax.local_device_count()
  rng = np.random.default_rng(0)
  inputs = []
  for rows, din, dout in layers:
    shape = lambda features: (devices, chunks, batch_size // devices * rows, features)
    inputs.append((rng.standard_normal(shape(din)).astype(np.float32),
                   rng.standard_normal(shape(dout)).astype(np.float32)))
  step = jax.pmap(lambda inputs: [form(x, dy) for x, dy in inputs])
  inputs = jax.pmap(lambda xs: xs)(inputs)  # on the devices once, sharded as pmap does
  return lambda: jax.block_until_ready(step(inputs))


def check_same_function(layers: list[tuple[int, int, int]], chunks: int) -> float:
  """The largest relative difference of the two forms' gradients, on one batch element."""
  rng = np.random.default_rng(1)
  worst = 0.0
  for rows, din, dout in layers:
    x = rng.standard_normal((chunks, rows, din)).astype(np.float32)
    dy = rng.standard_normal((chunks, rows, dout)).astype(np.float32)
    a, b = (np.asarray(jax.jit(form)(x, dy)) for form in FORMS.values())
    worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
  return worst


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.weight_gradient_forms',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch_size', type=int, default=128, help='global, as the train step')
  parser.add_argument('--chunks', type=int, default=4)
  parser.add_argument('--tokens', type=int, default=16, help='tokens per chunk')
  parser.add_argument('--latents', type=int, default=8, help='slow-stream latents')
  parser.add_argument('--embed', type=int, default=64)
  parser.add_argument('--mlp_ratio', type=int, default=4)
  parser.add_argument('--self_blocks', type=int, default=2,
                      help='fast-stream self-attention blocks inside the scan')
  parser.add_argument('--cross_blocks', type=int, default=2)
  parser.add_argument('--pairs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=50)
  parser.add_argument('--warmup', type=int, default=5)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  layers = cell_dense_layers(args.tokens, args.latents, args.embed, args.mlp_ratio,
                             args.self_blocks, args.cross_blocks)
  flops = sum(2 * args.batch_size * args.chunks * rows * din * dout for rows, din, dout in layers)
  print(f'{jax.local_device_count()} devices, {allocator.preloaded_allocator()} malloc, '
        f'global batch {args.batch_size}, {args.chunks} chunks, {len(layers)} dense layers, '
        f'{flops / 1e9:.2f} GFLOP per step; largest relative difference of the forms '
        f'{check_same_function(layers, args.chunks):.1e}; milliseconds per step')
  runners = {name: runner(form, layers, args.batch_size, args.chunks)
             for name, form in FORMS.items()}
  for run in runners.values():
    run()
  for pair in range(args.pairs):
    names = list(FORMS)[::-1] if pair % 2 else list(FORMS)
    times = {name: 1e3 * median_seconds(runners[name], args.repeats, args.warmup)
             for name in names}
    print(f'pair {pair}: ' + ', '.join(
        f'{name} {times[name]:.2f} ({flops / times[name] / 1e6:.0f} GFLOP/s)' for name in FORMS),
          flush=True)


if __name__ == '__main__':
  main()
