#!/usr/bin/env bash
# The zoos behind the README's "What it found" table: trains each one and analyses it.
#   JAXWEIGHTS_DATA_DIR=DIR bash benchmarks/findings.sh [train|analyze|all] [OUT=runs/findings]
# then `python benchmarks/findings_table.py runs/findings` prints the table's rows.
set -euo pipefail
step="${1:-all}"; out="${2:-runs/findings}"
jw="${JAXWEIGHTS:-jaxweights}"  # e.g. JAXWEIGHTS=".venv/bin/python -m jaxweights.cli"
cnn_small=(--config.model.channels='(8,16)' --config.model.dense='(32,)' --config.num_epochs=3 --config.num_seeds=2)
declare -A zoo=(
  [mnist_mlp]="configs/quickstart.py"
  [fashion_mnist_mlp]="configs/quickstart.py --config.dataset=fashion_mnist"
  [mnist_cnn]="configs/mnist_cnn.py ${cnn_small[*]}"
  [fashion_mnist_cnn]="configs/fashion_mnist_cnn.py ${cnn_small[*]}"
  [cifar10_cnn]="configs/cifar10_cnn.py --config.model.channels=(16,32) --config.model.dense=(64,) --config.num_epochs=3 --config.num_seeds=2 --config.max_train=10000 --config.max_test=2000"
  [mnist_vit]="configs/mnist_vit.py --config.model.width=32 --config.model.depth=2 --config.model.num_heads=2 --config.num_epochs=3 --config.warmup_epochs=1.0 --config.num_seeds=2 --config.max_train=10000 --config.max_test=2000"
)
for name in mnist_mlp fashion_mnist_mlp mnist_cnn fashion_mnist_cnn cifar10_cnn mnist_vit; do
  read -r -a args <<< "${zoo[$name]}"
  if [[ "$step" == train || "$step" == all ]]; then
    $jw train --config "${args[0]}" --workdir "$out/$name" "${args[@]:1}" --noprogress
  fi
  if [[ "$step" == analyze || "$step" == all ]]; then
    $jw analyze --workdir "$out/$name"
  fi
done
