"""train/worker.py: Ray Train's per-report worker lines are hidden at the default level."""

from __future__ import annotations

import logging

import pytest

from mvae_dist.config import ConfigError, TrainSection


def test_the_real_ray_train_report_loggers_follow_train_ray_log_level():
    import ray.train.v2._internal.execution.context as context
    import ray.train.v2._internal.execution.storage as storage

    from mvae_dist.train.worker import quiet_ray_train_logs

    # the loggers that write "Reporting training result ..." and "Checkpoint successfully created ..."
    loggers = [context.logger, storage.logger]
    try:
        quiet_ray_train_logs(TrainSection().ray_log_level)
        assert all(not lg.isEnabledFor(logging.INFO) for lg in loggers)
        assert all(lg.isEnabledFor(logging.WARNING) for lg in loggers)
        quiet_ray_train_logs("INFO")
        assert all(lg.isEnabledFor(logging.INFO) for lg in loggers)
    finally:
        for lg in loggers:
            lg.setLevel(logging.NOTSET)


def test_bad_level_is_a_config_error():
    with pytest.raises(ConfigError, match="train.ray_log_level must be one of DEBUG, INFO, WARNING, ERROR"):
        TrainSection(ray_log_level="LOUD")
