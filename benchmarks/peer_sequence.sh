#!/usr/bin/env bash
# The peer table in one sequence on one machine: this machine's sgemm rate, then torch, JAX and
# tfmeta on ../shared/bench's workloads, one after another, with sine in alternating passes
# (JAX, tfmeta, JAX, tfmeta). JSON lines go to OUT (default peer_sequence.jsonl); nothing else
# should run meanwhile.
#
#   benchmarks/peer_sequence.sh [OUT] [BEFORE_SRC]
#
# Environment: TORCH_PY and JAX_PY, the Pythons of venvs with torch 2.13 and JAX 0.10.2
# (default /tmp/torchvenv, /tmp/jaxvenv; a missing one is skipped); PY, tfmeta's (default
# .venv). BEFORE_SRC, a checkout of an earlier tfmeta, adds its conv4 rows as "before".
set -u
cd "$(dirname "$0")"
OUT=$(realpath -m "${1:-peer_sequence.jsonl}")
BEFORE=${2:-}
PY=${PY:-../.venv/bin/python}
TORCH_PY=${TORCH_PY:-/tmp/torchvenv/bin/python}
JAX_PY=${JAX_PY:-/tmp/jaxvenv/bin/python}
BENCH=../../shared/bench
: > "$OUT"
tag() { sed -u "s/^{/{\"who\": \"$1\", /" | grep --line-buffered '^{' >> "$OUT"; }

$PY flop_bound.py 2>/dev/null | grep '^{' | tag sgemm
if [ -x "$TORCH_PY" ]; then
  for w in omniglot-conv4 omniglot-conv4-t1 hvp-power; do
    $TORCH_PY $BENCH/maml_torch.py --workload $w 2>/dev/null | tag torch; done
fi
if [ -x "$JAX_PY" ]; then
  for w in omniglot-conv4 omniglot-conv4-t1 hvp-power; do
    $JAX_PY $BENCH/maml_jax.py --workload $w 2>/dev/null | tag jax; done
fi
if [ -n "$BEFORE" ]; then
  PYTHONPATH=$(realpath "$BEFORE") $PY maml_tfmeta.py --workload omniglot-conv4,omniglot-conv4-t1 \
    2>/dev/null | tag before
fi
$PY maml_tfmeta.py --workload omniglot-conv4,omniglot-conv4-t1 2>/dev/null | tag tfmeta
$PY hessian_tfmeta.py --workload hvp-power 2>/dev/null | tag tfmeta
for pass in 1 2; do
  [ -x "$JAX_PY" ] && $JAX_PY $BENCH/maml_jax.py --workload sine-mlp --iters 2000 2>/dev/null | tag jax
  $PY keras_sine.py --iters 2000 --passes 1 --k 1,50 2>/dev/null | tag tfmeta
done
cat "$OUT"
