"""Which GPU a scoring task uses: Spark's address as CUDA sees it in this process."""

from __future__ import annotations

import pytest

from dear_udf.exceptions import ModelLoadError
from dear_udf.model import ModelSpec
from dear_udf.spark.worker_model import visible_index


@pytest.mark.parametrize(
    "address,visible,expected",
    [
        ("3", None, 3),  # no restriction: the address is CUDA's index
        ("3", "", 3),
        ("3", "1,3", 1),  # restricted: CUDA numbers the visible devices from 0
        ("3", " 2, 3 ", 1),
        ("0", "GPU-5f3c", 0),  # isolated to this task's one GPU under another name
    ],
)
def test_spark_gpu_address_maps_to_the_visible_cuda_index(address, visible, expected):
    assert visible_index(address, visible) == expected


def test_an_address_the_visible_devices_hide_is_refused_naming_both():
    with pytest.raises(ModelLoadError, match=r"GPU '5'.*CUDA_VISIBLE_DEVICES='0,1'"):
        visible_index("5", "0,1")


def test_the_device_default_means_the_tasks_gpu_for_library_callers_too():
    assert ModelSpec(model="m").device is None
