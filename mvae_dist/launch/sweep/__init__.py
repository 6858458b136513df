"""Ray Tune sweeps: a ``tune/*.yaml`` spec -> a Tuner of Ray Train trials -> best config, table, plots.

The only module that imports ``ray.tune``. ``mvae-dist tune SPEC [key=value ...]`` calls
``run_sweep``; ``load_sweep_spec`` parses and validates a spec without starting anything.

Spec (YAML; every key but ``base`` and ``space`` has a default)::

    name: gamma-n-k                    # names the parent MLflow run and the output folder
    base:                              # the training config every trial starts from
      config: configs/embedded/mmvae-ci.yaml
      overrides: {data.url: data/embedded, train.max_steps: 0}   # section.key: value
    space:                             # any config key, section.key: {kind: arguments}
      objective.gamma: {uniform: [1.1, 5.0]}
      objective.N: {choice: [1, 2, 5, 10]}
      objective.K: {choice: [1, 5, 10, 30]}
    metric: coherence_cross            # a key of the workers' per-epoch reports
    mode: max                          # max | min
    num_samples: 16                    # trials (a grid_search is repeated num_samples times)
    max_concurrent_trials: auto        # auto: as many as the cluster's CPUs hold at once
    scheduler: {name: asha, max_t: 10, grace_period: 1, reduction_factor: 2}   # or: fifo
    resources: {workers_per_trial: 2, cpus_per_worker: 0.99, use_gpu: false}
    seed: 0                            # of the search (trials keep train.seed of the config)
    tracking: {experiment: mvae-dist-sweeps, run_name: null, uri: null}
    output_dir: sweeps                 # results go to <output_dir>/<name>-<timestamp>/
    verbose: 1                         # Tune's progress output: 0 silent, 1 status, 2 more

Search kinds (as in ``ray.tune``): ``uniform: [lo, hi]``, ``quniform: [lo, hi, q]``,
``loguniform: [lo, hi]``, ``qloguniform: [lo, hi, q]``, ``randint: [lo, hi]`` (hi excluded),
``qrandint: [lo, hi, q]`` (hi included), ``lograndint: [lo, hi]`` (hi excluded),
``choice: [v, ...]``, ``grid_search: [v, ...]``. Every key must exist in ``mvae_dist.config``
and every value a trial can get is checked there first (the ends of ranges, each listed value,
and their combinations with each other and the base), so ``objective.gamma`` below or at 1 is a
ConfigError before anything starts.

Overrides on the command line (values parsed as YAML): ``num_samples=4``, ``metric=test_log_joint``,
``scheduler=fifo``, ``scheduler.max_t=3``, ``resources.workers_per_trial=1``,
``tracking.experiment=x``, ``base.config=PATH``, ``base.data.url=s3://bucket/embedded`` (any
``base.<section>.<key>``: a base override), ``space.objective.K="{choice: [1, 30]}"`` (``null``
removes a key). A relative ``base.config`` is looked up from the current directory, then from the
folder above the spec's (the project root for ``tune/*.yaml``); other relative local paths
(``data.url``, ``train.storage_path``, options files) are made absolute from the current directory,
since trials run elsewhere.

What the sweep owns: every trial reports once per epoch, after its evaluation, so each report
carries the metric (``train.checkpoint_every = 0``, ``train.eval_every = 1``); one Tune iteration
is one epoch and ASHA's ``max_t`` is the trials' ``train.epochs`` (``scheduler.max_t`` sets it;
default: the base config's); ``train.max_steps`` still caps a trial. ``resources`` sets
``train.num_workers`` / ``cpus_per_worker`` / ``use_gpu``; each trial's driver takes 0.01 CPU
besides its workers (with a whole CPU each trial's driver would hold the CPUs its Train workers
need, and on a small machine they would never start), so on a 2-CPU
machine use ``cpus_per_worker: 0.99``. ``train.name`` / ``tracking.run_name`` are per trial,
``train.storage_path`` holds the sweep's Tune directory ``<name>-<timestamp>/`` with the trials'
Ray Train runs in its ``trials/``.

MLflow: one parent run (params = the resolved spec) and one child run per trial (tag
``mlflow.parentRunId``; params = the trial's resolved config; tags ``tune_trial_id``, ``sweep``,
``sweep_run`` and ``tune_status``). The trial's Ray Train workers log into the child run (rank 0)
and end it FINISHED; a driver-side Tune callback tags every finished trial ``completed``
(FINISHED), ``early_stopped`` (stopped by the scheduler before its budget: KILLED) or ``error``
(FAILED). The parent run gets the artifacts ``best_config.yaml`` (the best trial's full resolved
RunConfig), ``trials.csv``, ``trials.md``, ``plots/<metric>_vs_<key>.png``, ``spec.yaml`` and
``summary.json``, the same files as the local folder ``<output_dir>/<name>-<timestamp>/`` (written
to a temporary name, then renamed). The best trial is the one with the best LAST reported metric.

The package, by responsibility: ``spec`` (parse, override and validate a spec), ``results``
(the trial table, CSV, plots), ``trial`` (one trial's Ray Train run and MLflow child run),
``run`` (``run_sweep``: Tune end to end).
"""

from .results import SweepResult, TrialRecord
from .run import run_sweep
from .spec import (
    DRIVER_CPU,
    SEARCH_KINDS,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_RUN,
    TAG_TRIAL,
    Dimension,
    SweepError,
    SweepSpec,
    load_sweep_spec,
)

__all__ = ["DRIVER_CPU", "SEARCH_KINDS", "TAG_STATUS", "TAG_SWEEP", "TAG_SWEEP_RUN", "TAG_TRIAL", "Dimension",
           "SweepError", "SweepResult", "SweepSpec", "TrialRecord", "load_sweep_spec", "run_sweep"]
