"""Choosing a tf.distribute strategy from a name and device counts."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from cfal.errors import UsageError


def make_strategy(kind: str = "default", *, gpus: int = 0,
                  cpu_replicas: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy for `kind` ("default", "mirrored", "multi_worker").

  `gpus=N` mirrors over the first N GPUs and fails if fewer exist;
  `cpu_replicas=N` splits the CPU into N logical devices and mirrors over
  them (this must happen before TensorFlow touches a device, so call this
  first). "multi_worker" reads the cluster from `$TF_CONFIG`. Devices are
  never silently swapped for others.
  """
  if gpus < 0 or cpu_replicas < 0:
    raise UsageError("--gpus and --cpu_replicas must be >= 0.")
  if gpus and cpu_replicas:
    raise UsageError(f"--gpus={gpus} and --cpu_replicas={cpu_replicas} "
                     f"contradict each other: pick one.")
  if kind == "multi_worker":
    if cpu_replicas or gpus:
      raise UsageError("--strategy=multi_worker uses every local GPU (or the "
                       "CPU) of each worker; drop --gpus/--cpu_replicas.")
    _check_tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()
  if kind not in ("default", "mirrored"):
    raise UsageError(f"Unknown --strategy={kind!r}; choose default, "
                     f"mirrored or multi_worker.")
  if cpu_replicas:
    _split_cpu(cpu_replicas)
    return tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(cpu_replicas)])
  found = tf.config.list_physical_devices("GPU")
  if gpus:
    if len(found) < gpus:
      raise UsageError(f"--gpus={gpus} but TensorFlow sees {len(found)} GPU(s) "
                       f"on this machine; use --gpus={len(found)} or fewer, or "
                       f"--cpu_replicas to test mirroring on the CPU.")
    return tf.distribute.MirroredStrategy(
        [f"/gpu:{i}" for i in range(gpus)])
  if kind == "mirrored":
    return tf.distribute.MirroredStrategy()   # every visible GPU, or the CPU
  return tf.distribute.get_strategy()


def slow_bfloat16_note(precision: str) -> str | None:
  """A warning when bfloat16 would run emulated on this machine's CPU.

  Without a GPU, bfloat16 math is fast only on CPUs with native bf16
  instructions (x86 AVX512-BF16 or AMX, Arm BF16). Elsewhere oneDNN
  converts every tensor to float32 and back; on an AMD Zen 3 without them
  the default recipe's step ran 10x slower (bench/time_to_accuracy.py).
  Returns None when there is nothing to warn about, or the CPU's features
  cannot be read.
  """
  if precision != "bfloat16" or tf.config.list_physical_devices("GPU"):
    return None
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
      words = set(info.read().split())
  except OSError:
    return None
  if words & {"avx512_bf16", "amx_bf16", "bf16"}:
    return None
  return ("this CPU has no native bfloat16 instructions (AVX512-BF16, AMX "
          "or Arm BF16), so --mixed_precision=bfloat16 is emulated and "
          "much slower (10x measured on AMD Zen 3); float32 is faster here.")


def _split_cpu(replicas: int) -> None:
  cpu = tf.config.list_physical_devices("CPU")[0]
  wanted = [tf.config.LogicalDeviceConfiguration()] * replicas
  try:
    tf.config.set_logical_device_configuration(cpu, wanted)
  except RuntimeError:
    have = len(tf.config.list_logical_devices("CPU"))
    if have < replicas:
      raise UsageError(f"--cpu_replicas={replicas}: TensorFlow was already "
                       f"initialised with {have} CPU device(s); choose the "
                       f"replicas before anything else runs.") from None


def _check_tf_config() -> None:
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    raise UsageError("--strategy=multi_worker needs $TF_CONFIG with the "
                     "cluster and this worker's task (see README).")
  try:
    parsed = json.loads(raw)
    cluster, task = parsed["cluster"], parsed["task"]
    hosts = cluster[task["type"]]
    if task["type"] not in ("chief", "worker") or not (
        0 <= int(task["index"]) < len(hosts)):
      raise KeyError("task")
  except (ValueError, KeyError, TypeError):
    raise UsageError("$TF_CONFIG must be JSON like {\"cluster\": {\"worker\": "
                     "[\"host:port\", ...]}, \"task\": {\"type\": \"worker\", "
                     "\"index\": 0}} (a \"chief\" list and task type are "
                     "accepted too).") from None


def resolve_step_mode(mode: str, strategy: tf.distribute.Strategy, *,
                      deterministic: bool = False) -> str:
  """`auto` -> what was measured fastest on the devices present.

  On CPU, XLA made conv train steps about 2x slower than plain tf.function;
  on a GPU XLA usually wins. With several replicas the synchronized
  BatchNorm all-reduces inside the compiled forward pass, which XLA can
  only compile when every replica is a GPU; `auto` then stays with
  `function`, and an explicit `xla` over CPU replicas is refused. XLA has
  no deterministic MaxPool gradient, so a deterministic run never uses it.
  """
  replicas = strategy.num_replicas_in_sync
  gpus = bool(tf.config.list_physical_devices("GPU"))
  if mode == "auto":
    use_xla = gpus and replicas == 1 and not deterministic
    return "xla" if use_xla else "function"
  if mode == "xla" and deterministic:
    raise UsageError("--deterministic cannot use --step_mode=xla: XLA has no "
                     "deterministic MaxPool gradient; use --step_mode=function"
                     " (or auto).")
  if mode == "xla" and replicas > 1 and not gpus:
    raise UsageError(f"--step_mode=xla cannot compile the cross-replica "
                     f"BatchNorm of {replicas} CPU replicas; use "
                     f"--step_mode=function (or auto).")
  return mode


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True unless this process is a non-chief worker of a cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return (not has_chief and resolver.task_type == "worker"
          and resolver.task_id == 0)
