"""Learning dynamics of a zoo: weight change, statistics over epochs, representations, modularity.

Everything is written for one network and mapped over the leading networks axis with
`jax.lax.map(..., batch_size=chunk)`: `chunk` networks are `jax.vmap`-ed at a time inside one compiled
program (1 on CPU, 64 on accelerators; see `default_chunk`).

Modules, in the order the data flows:

* `snapshots`: per-epoch parameters of a run directory.
* `rwc`: relative weight change (Agrawal et al. 2020, arXiv 2011.06735).
* `trajectories`: weight statistics, node strength and layer fluctuation at every snapshot.
* `activations`: every layer's representation of the probe images (`capture`, `capture_zoo`).
* `cka`: linear CKA (Kornblith et al. 2019, arXiv 1905.00414) and minibatch CKA (Nguyen, Raghu,
  Kornblith 2021, arXiv 2010.15327), used epoch × epoch after Sharon & Dar 2024 (arXiv 2405.17377).
* `modularity`: k-NN graph modularity over depth and pruning candidates (Lu et al. 2022, ECCV).
* `probes`: linear probes and their decision regions (Sharon & Dar 2024).
* `run_inputs`: a run's config and probe data; `accumulator`: blocks of networks through CKA, probes
  and modularity; `pipeline`: `write_dynamics`; `summary`: `dynamics.json`.

The report's sections and figures of the dynamics are in `jaxweights.report.dynamics`.
"""

from jaxweights import _deprecated
from jaxweights.dynamics.accumulator import RepresentationDynamics
from jaxweights.dynamics.activations import capture, capture_zoo
from jaxweights.dynamics.cka import (
    HIGHEST,
    cka_forms,
    cka_linear,
    cka_matrix,
    cka_minibatch,
    gram,
    hsic_biased,
    hsic_unbiased,
    minibatch_grams,
    normalise_hsic,
)
from jaxweights.dynamics.common import INPUT, DynamicsError, default_chunk, network_masks
from jaxweights.dynamics.communities import (
    NO_SIGNAL,
    NON_FINITE,
    OK,
    REASONS,
    knn_graph,
    knn_indices,
    knn_modularity,
    modularity,
    modularity_curves,
    pruning_candidates,
    representation_status,
)
from jaxweights.dynamics.pipeline import representation_dynamics, write_dynamics
from jaxweights.dynamics.probes import choose_triples, plane_points, probe_predict, train_probe
from jaxweights.dynamics.run_inputs import probe_data, run_config
from jaxweights.dynamics.rwc import relative_weight_change, rwc_every_k_steps, rwc_l1_ratio, rwc_mean_elementwise
from jaxweights.dynamics.snapshots import (
    check_same_epochs,
    checkpoint_epochs,
    kernel_layers,
    load_dir_snapshots,
    load_snapshots,
    snapshot_dirs,
    stack_epochs,
)
from jaxweights.dynamics.summary import summarize
from jaxweights.dynamics.trajectories import statistics_over_epochs

__all__ = [
    "HIGHEST",
    "INPUT",
    "NON_FINITE",
    "NO_SIGNAL",
    "OK",
    "REASONS",
    "DynamicsError",
    "RepresentationDynamics",
    "capture",
    "capture_zoo",
    "check_same_epochs",
    "checkpoint_epochs",
    "choose_triples",
    "cka_forms",
    "cka_linear",
    "cka_matrix",
    "cka_minibatch",
    "default_chunk",
    "gram",
    "hsic_biased",
    "hsic_unbiased",
    "kernel_layers",
    "knn_graph",
    "knn_indices",
    "knn_modularity",
    "load_dir_snapshots",
    "load_snapshots",
    "minibatch_grams",
    "modularity",
    "modularity_curves",
    "network_masks",
    "normalise_hsic",
    "plane_points",
    "probe_data",
    "probe_predict",
    "pruning_candidates",
    "relative_weight_change",
    "representation_dynamics",
    "representation_status",
    "run_config",
    "rwc_every_k_steps",
    "rwc_l1_ratio",
    "rwc_mean_elementwise",
    "snapshot_dirs",
    "stack_epochs",
    "statistics_over_epochs",
    "summarize",
    "train_probe",
    "write_dynamics",
]

__getattr__ = _deprecated.forward(__name__)  # names moved in 0.2, importable under the old name for one release
