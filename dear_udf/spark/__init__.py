"""The Spark adapter: the job on Spark, around the Spark-free scoring core.

In the order the data flows:

- ``job``: the driver that runs read -> join -> score -> top-k -> write -> summary;
- ``session``: building or reusing the SparkSession with the settings scoring needs;
- ``preflight``: the refusals made before any input is read or model loaded;
- ``read``: inputs of every supported format as DataFrames with canonical columns;
- ``counts``: what the inputs hold, counted in one Spark action;
- ``steps``: the steps but scoring (read, join, top-k, evaluate, write), each returning
  its part of the summary;
- ``stages``: the DataFrame stages of those steps: dedupe, depth, join with drop
  reasons, DeAR's ties, top-k;
- ``score_step``: the score step: cache lookup, check of hits, misses scored in chunks;
- ``score_cache``: the score cache on Spark: key expressions, lookups, chunk appends;
- ``udf``: the ``mapInArrow`` scoring function the tasks run;
- ``worker_model``: one loaded model per Python worker, and the GPU a task was given;
- ``write``: the output table (Parquet, or Delta through Spark or ``deltalake``) and the
  cache's appends through Spark's Delta;
- ``hadoop``: files at remote locations through Spark's Hadoop file systems;
- ``progress``: a line per long-running Spark stage.
"""
