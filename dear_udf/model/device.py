"""Where and in what precision a model runs: the device to load on, refused early when
this machine cannot give it, and the torch dtype of a ``DTYPES`` name.

Spark tasks use the GPU Spark assigned them instead (``spark.worker_model.task_device``).
"""

from __future__ import annotations

from ..exceptions import ModelLoadError


def resolve_device(device: str | None) -> str:
    """The device to load on: ``device`` when given, else CUDA when this process sees a GPU
    (``CUDA_VISIBLE_DEVICES`` decides which), else CPU. Spark tasks use the GPU Spark
    assigned instead (``spark.worker_model.task_device``).

    Example:
        >>> resolve_device("cuda:1")
        'cuda:1'
    """
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> None:
    """Refuse a CUDA device this machine cannot give, before any weights are read.

    Runs where the model will run: in ``load_model`` on executors, and on the driver
    when the executors are this machine (local mode).

    Example:
        >>> check_device("cpu")  # always given
    """
    if not device or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
            "use --device cpu, or run where the executors have GPUs."
        )
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise ModelLoadError(f"device {device!r}: this machine has {count} CUDA device(s).")


def torch_dtype(name: str):
    """The torch dtype of a ``DTYPES`` name.

    Example:
        >>> torch_dtype("bfloat16")
        torch.bfloat16
    """
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
