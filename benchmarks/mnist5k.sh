#!/usr/bin/env bash
# Deep Compression on the built-in 5k MNIST digits, through the CLI exactly as a user runs it.
# Writes benchmarks/results/mnist5k-<model>.json (the `--report` of `modelzip compress`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results/files
for model in lenet-300-100 lenet-5; do
  .venv/bin/modelzip compress --model "$model" --data mnist5k --recipe deep-compression \
    --out "benchmarks/results/files/$model-mnist5k.mzip" --report "benchmarks/results/mnist5k-$model.json"
done
