"""Running mmva on AWS: SageMaker training jobs and endpoints.

- :mod:`mmva.cloud.sagemaker`: the boto3 requests (training job, model, endpoint config with
  optional asynchronous inference, endpoint), built apart from sending them (``--dry-run``).
- :mod:`mmva.cloud.entry`: the training entry point inside the container (``python -m mmva.cloud.entry``).
- :mod:`mmva.cloud.package`: the ``model.tar.gz`` layout and :func:`~mmva.cloud.package.find_model`.

S3 paths themselves are handled everywhere by :mod:`mmva.io.storage`; several processes by
:mod:`mmva.train.distributed`. See docs/scaling.md.
"""
