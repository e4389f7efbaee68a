"""`tlb_jax.host_devices`: how many XLA host devices a CPU run gets, and when it is left alone."""

import os
import subprocess
import sys

import pytest

from configs import smoke
from test_main import REPO_ROOT
from tlb_jax import host_devices, run_files

TWO_DEVICES = ('--xla_force_host_platform_device_count=2 '
               f'{host_devices.SINGLE_THREADED_MATMULS_FLAG}')


def _environment_without_a_device_count(**variables) -> dict[str, str]:
  """The tests' environment with `variables`, less the device count the test setup forces."""
  env = dict(os.environ, **variables)
  env['XLA_FLAGS'] = ' '.join(flag for flag in env.get('XLA_FLAGS', '').split()
                              if not flag.startswith(host_devices.DEVICE_COUNT_FLAG))
  return env


def test_one_device_per_core_when_the_batches_divide_evenly():
  assert host_devices.largest_even_split(cores=2, batch_size=128, eval_batch_size=1000) == 2


def test_fewer_devices_when_a_batch_does_not_divide_by_the_cores():
  assert host_devices.largest_even_split(cores=8, batch_size=128, eval_batch_size=1000) == 8
  assert host_devices.largest_even_split(cores=6, batch_size=128, eval_batch_size=1000) == 4
  assert host_devices.largest_even_split(cores=3, batch_size=128, eval_batch_size=1000) == 2
  assert host_devices.largest_even_split(cores=4, batch_size=7, eval_batch_size=1000) == 1


def test_each_device_keeps_whole_micro_batches():
  # 2048 / 16 = 128 images a device, not a multiple of 256-image micro-batches.
  assert host_devices.largest_even_split(cores=16, batch_size=2048, eval_batch_size=2048,
                                         microbatch_size=256) == 8


def test_default_flags_give_single_threaded_devices_and_keep_other_flags():
  flags = host_devices.xla_flags_for({'XLA_FLAGS': '--xla_dump_to=/tmp/x'}, cores=2,
                                     batch_size=128, eval_batch_size=1000)
  assert flags == f'--xla_dump_to=/tmp/x {TWO_DEVICES}'


def test_one_core_leaves_the_flags_alone():
  assert host_devices.xla_flags_for({}, cores=1, batch_size=128, eval_batch_size=1000) is None


def test_a_device_count_already_in_xla_flags_wins():
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
             host_devices.ENVIRONMENT_VARIABLE: '2'}
  assert host_devices.xla_flags_for(environ, cores=2, batch_size=128,
                                    eval_batch_size=1000) is None


def test_the_environment_variable_sets_the_count():
  environ = {host_devices.ENVIRONMENT_VARIABLE: '1'}
  assert host_devices.xla_flags_for(environ, cores=2, batch_size=128,
                                    eval_batch_size=1000) is None
  environ = {host_devices.ENVIRONMENT_VARIABLE: '4'}
  assert host_devices.xla_flags_for(environ, cores=2, batch_size=128, eval_batch_size=1000) == (
      f'--xla_force_host_platform_device_count=4 {host_devices.SINGLE_THREADED_MATMULS_FLAG}')


@pytest.mark.parametrize('value', ['two', '0', '-1', '1.5'])
def test_a_malformed_count_is_an_error_that_says_what_to_set(value):
  with pytest.raises(host_devices.DeviceCountError, match='whole number of host devices'):
    host_devices.requested_device_count({host_devices.ENVIRONMENT_VARIABLE: value})


def test_main_answers_a_malformed_count_with_one_error_line(tmp_path):
  env = _environment_without_a_device_count(TLB_JAX_CPU_DEVICES='two', TLB_JAX_MALLOC='system')
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={tmp_path}/run'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: TLB_JAX_CPU_DEVICES='two' must be a whole number")


def test_the_flags_take_effect_when_set_after_jax_is_imported():
  # The benchmark imports JAX before it reads its config; the backend starts at the first use.
  env = _environment_without_a_device_count(TLB_JAX_CPU_DEVICES='3', JAX_PLATFORMS='cpu')
  script = ('import jax\n'
            'from tlb_jax import host_devices\n'
            'host_devices.use_one_device_per_core(batch_size=12, eval_batch_size=12)\n'
            'print(jax.local_device_count())\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
  assert result.stdout.split() == ['3']


@pytest.mark.skipif(host_devices.usable_cores() < 2, reason='needs two cores')
def test_eval_mode_splits_the_run_eval_batch_over_the_cores(tmp_path):
  # An odd training batch would leave one device; the eval batch of 6 takes one per core.
  config = smoke.get_config()
  config.update(batch_size=3, eval_batch_size=6)
  run_files.write_config(str(tmp_path), config)
  env = _environment_without_a_device_count(TLB_JAX_MALLOC='system')
  result = subprocess.run(
      [sys.executable, 'main.py', '--mode=eval', f'--workdir={tmp_path}'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
  assert 'local devices: [CpuDevice(id=0), CpuDevice(id=1)]' in result.stderr, result.stderr
