r"""Micro-benchmark: three formulations of the attention core at the chunk shapes of a TLB.

  python -m benchmarks.attention_forms                  # configs/cifar10.py's shapes
  python -m benchmarks.attention_forms --batch_size=256 --tokens=8 --latents=8 --heads=1 \
      --head_dim=64                                     # the seed model's

The core is what `layers.MultiHeadAttention` computes between its projections (less the scaling
of q, folded into its projection here): q.k logits, a softmax, and the weighted sum of the
values. Its forward and backward (the
gradient of a fixed linear function of the output with respect to q, k and v) run pmapped over
the local devices, as the train step does, for each attention of one chunk of the TLB: the
fast stream's self-attention (tokens over tokens), its cross-attention (tokens over latents)
and the slow stream's (latents over tokens). The formulations:

  einsum:    two einsums with batch dimensions (b, h), as `MultiHeadAttention` does;
  folded:    heads moved into the batch first, then two plain batched matmuls;
  broadcast: broadcast multiply and reduce over the contracted axis (no dot at all).

Each pair times all three back to back, in a rotating order, the median of `--repeats` calls
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


def einsum_core(q, k, v):
  """q (B, Lq, H, Dh), k and v (B, Lk, H, Dh) -> (B, Lq, H, Dh)."""
  weights = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k), axis=-1)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


def folded_core(q, k, v):
  """As `einsum_core`, with the heads folded into the batch before two batched matmuls."""
  batch, lq, heads, dh = q.shape
  fold = lambda x: x.transpose(0, 2, 1, 3).reshape(batch * heads, x.shape[1], dh)
  weights = jax.nn.softmax(jnp.matmul(fold(q), fold(k).transpose(0, 2, 1)), axis=-1)
  out = jnp.matmul(weights, fold(v)).reshape(batch, heads, lq, dh)
  return out.transpose(0, 2, 1, 3)


def broadcast_core(q, k, v):
  """As `einsum_core`, by broadcast multiplies and sums."""
  logits = (q[:, :, None] * k[:, None]).sum(-1)               # (B, Lq, Lk, H)
  weights = jax.nn.softmax(logits, axis=2)
  return (weights[..., None] * v[:, None]).sum(2)              # (B, Lq, H, Dh)


FORMS = {'einsum': einsum_core, 'folded': folded_core, 'broadcast': broadcast_core}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.attention_forms',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch_size', type=int, default=128, help='global, as the train step')
  parser.add_argument('--tokens', type=int, default=16, help='tokens per chunk')
  parser.add_argument('--latents', type=int, default=8, help='slow-stream latents')
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--head_dim', type=int, default=16)
  parser.add_argument('--pairs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=50)
  parser.add_argument('--warmup', type=int, default=5)
  return parser.parse_args(argv)


def runner(core, batch_size: int, lq: int, lk: int, heads: int, head_dim: int):
  """A blocking zero-argument callable: `core`'s forward and backward, pmapped, on fixed
  random inputs."""
  devices = jax.local_device_count()
  rng = np.random.default_rng(0)
  shape = lambda length: (devices, batch_size // devices, length, heads, head_dim)
  q, k, v = (rng.standard_normal(shape(n)).astype(np.float32) for n in (lq, lk, lk))
  probe = rng.standard_normal(shape(lq)).astype(np.float32)
  grad = jax.pmap(jax.grad(lambda q, k, v, p: (core(q, k, v) * p).sum(), argnums=(0, 1, 2)))
  args = jax.pmap(lambda *xs: xs)(q, k, v, probe)  # on the devices once, sharded as pmap does
  return lambda: jax.block_until_ready(grad(*args))


def check_same_function(lq: int, lk: int, heads: int, head_dim: int) -> float:
  """The largest difference of the three formulations' outputs and gradients on one input."""
  rng = np.random.default_rng(1)
  q, k, v, p = (rng.standard_normal((2, n, heads, head_dim)).astype(np.float32)
                for n in (lq, lk, lk, lq))
  value_and_grads = {
      name: jax.jit(jax.value_and_grad(lambda q, k, v, c=core: (c(q, k, v) * p).sum(),
                                       argnums=(0, 1, 2)))(q, k, v)
      for name, core in FORMS.items()}
  reference = jax.tree.leaves(value_and_grads['einsum'])
  return max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for name in FORMS for a, b in zip(jax.tree.leaves(value_and_grads[name]),
                                               reference))


def main(argv=None):
  args = parse_args(argv)
  attentions = {'fast self': (args.tokens, args.tokens), 'fast cross': (args.tokens, args.latents),
                'slow cross': (args.latents, args.tokens)}
  print(f'{jax.local_device_count()} devices, {allocator.preloaded_allocator()} malloc, '
        f'global batch {args.batch_size}, {args.heads} heads of {args.head_dim}; '
        'microseconds per forward + backward')
  for attention, (lq, lk) in attentions.items():
    print(f'{attention} ({lq} queries over {lk}): largest difference from einsum '
          f'{check_same_function(lq, lk, args.heads, args.head_dim):.1e}')
    runners = {name: runner(core, args.batch_size, lq, lk, args.heads, args.head_dim)
               for name, core in FORMS.items()}
    for run in runners.values():
      run()
    for pair in range(args.pairs):
      names = list(FORMS)[pair % len(FORMS):] + list(FORMS)[:pair % len(FORMS)]
      times = {name: 1e6 * median_seconds(runners[name], args.repeats, args.warmup)
               for name in names}
      print(f'  pair {pair}: ' + ', '.join(f'{name} {times[name]:.0f}' for name in FORMS),
            flush=True)


if __name__ == '__main__':
  main()
