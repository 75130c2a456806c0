"""The Spark adapter: a thin layer around the scoring core.

- ``session``: building or reusing the SparkSession with the settings scoring needs;
- ``model_cache``: one loaded model per Python worker, and the GPU a task was given;
- ``udf``: the ``mapInArrow`` scoring stage;
- ``read``: inputs of every supported format as DataFrames with canonical columns;
- ``stages``: dedupe, depth, join (with drop reasons) and top-k;
- ``write``: Parquet, or Delta through Spark or the ``deltalake`` package;
- ``job``: the driver that runs read -> join -> score -> top-k -> write -> summary.
"""
