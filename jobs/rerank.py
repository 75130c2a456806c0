"""spark-submit entry point of the nightly reranking job.

    spark-submit --master spark://host:7077 --conf spark.executor.resource.gpu.amount=1 \\
        --conf spark.task.resource.gpu.amount=1 jobs/rerank.py \\
        --config gpu-cluster --queries ... --corpus ... --candidates ... \\
        --model /models/dear-3b-reranker-ce-v1 --output /tables/reranked

Same flags as ``dear-rerank run``, and the same ``main``: the same error handling and exit
codes (``dear_udf.cli``). ``-v`` may come anywhere. The package ``dear-rerank`` must be
installed on the driver and the executors (a wheel, or a packed environment).
"""

import sys

from dear_udf.cli import main

if __name__ == "__main__":
    flags = sys.argv[1:]
    verbose = [f for f in flags if f in ("-v", "--verbose")]
    sys.exit(main([*verbose, "run", *(f for f in flags if f not in verbose)]))
