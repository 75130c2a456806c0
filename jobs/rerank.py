"""spark-submit entry point of the nightly reranking job.

    spark-submit --master spark://host:7077 --conf spark.executor.resource.gpu.amount=1 \\
        --conf spark.task.resource.gpu.amount=1 jobs/rerank.py \\
        --config gpu-cluster --queries ... --corpus ... --candidates ... \\
        --model /models/dear-3b-reranker-ce-v1 --output /tables/reranked

Same flags as ``dear-rerank run``. The package ``dear-rerank`` must be installed on the
driver and the executors (a wheel, or ``--py-files``).
"""

import sys

from dear_udf.spark.job import submit_main

if __name__ == "__main__":
    sys.exit(submit_main())
