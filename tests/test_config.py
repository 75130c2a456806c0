"""Settings: the run-id rule, YAML and flag values refused in words (issue 13, case 10)."""

from __future__ import annotations

import pytest

from dear_udf.exceptions import ConfigError
from dear_udf.schema import check_run_id, partition_folder


@pytest.mark.parametrize(
    "run_id",
    ["2026-11-22", "night-1", "2024-05-01 T03:00", "nuit d'été", "a b", "x" * 200, "日" * 80],
)
def test_run_ids_that_name_a_partition_are_accepted(run_id):
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    ("run_id", "message"),
    [
        ("", "run_id must not be empty"),
        ("a%2Fb", r"run_id must not hold '%'"),
        ("a/b", r"run_id must not hold '/'"),
        ("a=b", r"run_id must not hold '='"),
        ("a\nb", "run_id must not hold control characters or line breaks, got 'a\\\\nb'"),
        ("a\tb", "control characters"),
        ("a\u2028b", "line breaks"),
        (" night", "must not start or end with whitespace"),
        ("night ", "must not start or end with whitespace"),
        ("x" * 201, "run_id must be at most 200 characters \\(it has 201\\)"),
        (":" * 100, "too long for a partition folder name"),  # each ':' becomes '%3A'
        ("__HIVE_DEFAULT_PARTITION__", "null partition"),
        (20261122, "run_id must be a string, not int"),
    ],
)
def test_run_ids_that_break_partitions_are_refused_by_rule(run_id, message):
    with pytest.raises(ConfigError, match=message):
        check_run_id(run_id)


def test_partition_folder_escapes_as_spark_does():
    assert partition_folder("2024-05-01 T03:00") == "run_id=2024-05-01 T03%3A00"
