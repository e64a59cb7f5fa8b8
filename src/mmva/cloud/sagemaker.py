"""SageMaker training jobs and endpoints as plain boto3 requests (no SageMaker SDK needed).

:func:`training_job_request` and :func:`deploy_requests` build the request dictionaries;
:func:`send` passes them to a boto3 ``sagemaker`` client. Keeping the two apart lets
``mmva sagemaker ... --dry-run`` print exactly what would be sent, and tests send it to moto.

The image is one container for both jobs: training runs ``python -m mmva.cloud.entry`` (set as the
container entry point in the request, so the image's own ENTRYPOINT does not matter); serving
runs the image's ``serve`` command on port 8080 with the model extracted into ``/opt/ml/model``.

>>> spec = TrainingJobSpec(job_name="mmva-1", image_uri="123.dkr.ecr.us-east-1.amazonaws.com/mmva:latest",
...                        role_arn="arn:aws:iam::123456789012:role/sm", data="s3://b/meld",
...                        output_path="s3://b/out")
>>> training_job_request(spec)["InputDataConfig"][0]["ChannelName"]
'training'
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

ENTRY_POINT = ["python", "-m", "mmva.cloud.entry"]
DATA_CHANNEL = "training"
_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class SageMakerRequestError(ValueError):
    """A request that SageMaker would reject; the message names the field and the problem."""


def unique_name(prefix: str = "mmva") -> str:
    """A SageMaker-valid resource name with a timestamp suffix.

    >>> bool(_NAME_RE.match(unique_name("mmva-train")))
    True
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{prefix[: 63 - len(stamp) - 1]}-{stamp}"


def _check_name(what: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise SageMakerRequestError(
            f"{what} {name!r}: 1-63 letters, digits and hyphens, starting with a letter or digit")
    return name


def _check_s3(what: str, uri: str) -> str:
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise SageMakerRequestError(f"{what} {uri!r}: SageMaker needs an s3:// URI")
    return uri


@dataclass(frozen=True)
class TrainingJobSpec:
    """What ``mmva sagemaker train`` asks for.

    ``data`` is the S3 prefix of a corpus (MELD layout or manifests), mounted as the ``training``
    channel; ``config`` and ``overrides`` become hyperparameters that the entry point resolves
    with :func:`mmva.config.load_config`.
    """

    job_name: str
    image_uri: str
    role_arn: str
    data: str
    output_path: str
    config: str = "tiny"
    overrides: tuple[str, ...] = ()
    recipe: str = "fit"  # "fit": the multimodal model (mmva train); "text": the servable default model
    instance_type: str = "ml.m5.2xlarge"  # the Dockerfile image is CPU-only; GPU types need a CUDA image
    instance_count: int = 1
    volume_size_gb: int = 50
    max_runtime_s: int = 24 * 3600
    spot: bool = False
    max_wait_s: int | None = None  # spot only: total time including waiting for capacity
    checkpoint_s3: str | None = None  # synced with /opt/ml/checkpoints: a restarted job resumes
    input_mode: str = "File"  # "FastFile" streams large corpora instead of copying them first
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def hyperparameters(spec: TrainingJobSpec) -> dict[str, str]:
    """The job's hyperparameters: SageMaker passes them as strings in ``hyperparameters.json``."""
    if spec.recipe not in ("fit", "text"):
        raise SageMakerRequestError(f"recipe {spec.recipe!r}: expected fit or text")
    hp = {"recipe": spec.recipe, "config": spec.config}
    for item in spec.overrides:
        if "=" not in item:
            raise SageMakerRequestError(f"override {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        hp[key.strip()] = value
    return hp


def training_job_request(spec: TrainingJobSpec) -> dict[str, Any]:
    """``create_training_job`` keyword arguments for a spec."""
    _check_name("job name", spec.job_name)
    _check_s3("data", spec.data)
    _check_s3("output path", spec.output_path)
    if spec.instance_count < 1:
        raise SageMakerRequestError(f"instance count {spec.instance_count}: must be at least 1")
    request: dict[str, Any] = {
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {
            "TrainingImage": spec.image_uri, "TrainingInputMode": spec.input_mode,
            "ContainerEntrypoint": ENTRY_POINT,
            "MetricDefinitions": [
                {"Name": "dev:emotion_weighted_f1", "Regex": r"dev/emotion_weighted_f1=([0-9.]+)"},
                {"Name": "dev:emotion_accuracy", "Regex": r"dev/emotion_accuracy=([0-9.]+)"},
                {"Name": "dev:sentiment_accuracy", "Regex": r"dev/sentiment_accuracy=([0-9.]+)"},
            ],
        },
        "RoleArn": spec.role_arn,
        "HyperParameters": hyperparameters(spec),
        "InputDataConfig": [{
            "ChannelName": DATA_CHANNEL,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.data,
                                            "S3DataDistributionType": "FullyReplicated"}},
        }],
        "OutputDataConfig": {"S3OutputPath": spec.output_path},
        "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count,
                           "VolumeSizeInGB": spec.volume_size_gb},
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime_s},
        # The image is built offline (HF_HUB_OFFLINE=1); a training job may download BERT-base /
        # R3D-18 weights for the reference config when it has internet access.
        "Environment": {"MMVA_OFFLINE": "0", "HF_HUB_OFFLINE": "0", **spec.environment},
    }
    if spec.spot:
        request["EnableManagedSpotTraining"] = True
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = spec.max_wait_s or 2 * spec.max_runtime_s
        if not spec.checkpoint_s3:
            raise SageMakerRequestError("spot training needs --checkpoint-s3 so an interrupted job resumes")
    if spec.checkpoint_s3:
        request["CheckpointConfig"] = {"S3Uri": _check_s3("checkpoint S3 URI", spec.checkpoint_s3),
                                       "LocalPath": "/opt/ml/checkpoints"}
    if spec.tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in spec.tags.items()]
    return request


@dataclass(frozen=True)
class DeploySpec:
    """What ``mmva sagemaker deploy`` asks for: a model, an endpoint config and an endpoint.

    With ``async_output`` the endpoint is asynchronous (requests queue, results land in S3):
    the right choice for long videos, whose analysis outlasts a real-time request's 60 s limit.
    """

    name: str  # used for the model, the endpoint config and the endpoint
    image_uri: str
    role_arn: str
    model_data: str  # s3://.../model.tar.gz
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    async_output: str | None = None  # s3:// prefix for results: makes the endpoint asynchronous
    async_failure: str | None = None
    async_sns_success: str | None = None
    async_sns_error: str | None = None
    max_concurrent_per_instance: int = 2
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def deploy_requests(spec: DeploySpec) -> list[tuple[str, dict[str, Any]]]:
    """``[(operation, kwargs)]`` for create_model, create_endpoint_config, create_endpoint."""
    _check_name("name", spec.name)
    _check_s3("model data", spec.model_data)
    tags = [{"Key": k, "Value": v} for k, v in spec.tags.items()]
    model: dict[str, Any] = {
        "ModelName": spec.name,
        "PrimaryContainer": {"Image": spec.image_uri, "ModelDataUrl": spec.model_data,
                             "Environment": {"MMVA_MODEL_DIR": "/opt/ml/model", **spec.environment}},
        "ExecutionRoleArn": spec.role_arn,
    }
    config: dict[str, Any] = {
        "EndpointConfigName": spec.name,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": spec.name,
                                "InstanceType": spec.instance_type,
                                "InitialInstanceCount": spec.instance_count,
                                "InitialVariantWeight": 1.0}],
    }
    if spec.async_output:
        output: dict[str, Any] = {"S3OutputPath": _check_s3("async output", spec.async_output)}
        if spec.async_failure:
            output["S3FailurePath"] = _check_s3("async failure path", spec.async_failure)
        notify = {k: v for k, v in (("SuccessTopic", spec.async_sns_success),
                                    ("ErrorTopic", spec.async_sns_error)) if v}
        if notify:
            output["NotificationConfig"] = notify
        config["AsyncInferenceConfig"] = {
            "OutputConfig": output,
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": spec.max_concurrent_per_instance},
        }
    endpoint = {"EndpointName": spec.name, "EndpointConfigName": spec.name}
    if tags:
        for request in (model, config, endpoint):
            request["Tags"] = tags
    return [("create_model", model), ("create_endpoint_config", config), ("create_endpoint", endpoint)]


@dataclass(frozen=True)
class TransformSpec:
    """What ``mmva sagemaker transform`` asks for: a Batch Transform job over an ``s3://`` prefix of videos.

    Each object under ``input`` is sent whole as the body of ``POST /invocations`` to the serving
    container (one record per file); its analyze JSON lands at ``output/<key>.out``. The model is
    ``model_name`` (one ``mmva sagemaker deploy`` made), or is created from ``model_data`` with
    ``image_uri`` and ``role_arn``. SageMaker's limits apply: a record is at most 100 MB
    (``max_payload_mb``) and one invocation at most 3600 s (``timeout_s``); longer or larger videos
    go to an asynchronous endpoint (1 GB, one hour) or ``mmva batch``.
    """

    job_name: str
    input: str  # s3:// prefix of the videos
    output: str  # s3:// prefix for the results
    model_name: str
    image_uri: str | None = None  # with role_arn and model_data: create the model first
    role_arn: str | None = None
    model_data: str | None = None
    content_type: str = "video/mp4"  # one per job; application/octet-stream for mixed formats (sniffed)
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1  # SageMaker splits the objects of the prefix between the instances
    max_concurrent: int = 2  # requests at once per instance; also the container's analysis workers
    max_payload_mb: int = 100
    timeout_s: int = 3600
    retries: int = 1  # per file, by SageMaker, after a failed or timed-out invocation (0-3)
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def transform_requests(spec: TransformSpec) -> list[tuple[str, dict[str, Any]]]:
    """``[(operation, kwargs)]``: ``create_model`` when the spec carries model data, then
    ``create_transform_job``.

    >>> spec = TransformSpec(job_name="mmva-batch-1", input="s3://b/videos/", output="s3://b/out/",
    ...                      model_name="mmva-rt")
    >>> [op for op, _ in transform_requests(spec)], transform_requests(spec)[0][1]["BatchStrategy"]
    (['create_transform_job'], 'SingleRecord')
    """
    _check_name("job name", spec.job_name)
    _check_name("model name", spec.model_name)
    _check_s3("input", spec.input)
    _check_s3("output", spec.output)
    if spec.instance_count < 1 or spec.max_concurrent < 1:
        raise SageMakerRequestError("instance count and max concurrent transforms must be at least 1")
    if not 1 <= spec.max_payload_mb <= 100:
        raise SageMakerRequestError(f"max payload {spec.max_payload_mb} MB: SageMaker allows 1-100 MB per record")
    if not 1 <= spec.timeout_s <= 3600:
        raise SageMakerRequestError(f"timeout {spec.timeout_s} s: SageMaker allows 1-3600 s per invocation")
    if not 0 <= spec.retries <= 3:
        raise SageMakerRequestError(f"retries {spec.retries}: SageMaker allows 0-3")
    tags = [{"Key": k, "Value": v} for k, v in spec.tags.items()]
    requests: list[tuple[str, dict[str, Any]]] = []
    if spec.model_data or spec.image_uri:
        if not (spec.model_data and spec.image_uri and spec.role_arn):
            raise SageMakerRequestError("creating the model needs model data, an image and a role together")
        model = deploy_requests(DeploySpec(name=spec.model_name, image_uri=spec.image_uri, role_arn=spec.role_arn,
                                           model_data=spec.model_data, tags=spec.tags))[0]
        requests.append(model)
    job: dict[str, Any] = {
        "TransformJobName": spec.job_name,
        "ModelName": spec.model_name,
        "MaxConcurrentTransforms": spec.max_concurrent,
        "MaxPayloadInMB": spec.max_payload_mb,
        "BatchStrategy": "SingleRecord",  # a video is one record: never split, never batched with another
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": spec.timeout_s,
                              "InvocationsMaxRetries": spec.retries},
        # The container's own limits must not be tighter than the job's (docker/serve reads these).
        "Environment": {"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(spec.timeout_s),
                        "MMVA_WORKERS": str(spec.max_concurrent),
                        "MMVA_MAX_UPLOAD_MB": str(spec.max_payload_mb), **spec.environment},
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.input}},
            "ContentType": spec.content_type, "CompressionType": "None", "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": spec.output, "Accept": "application/json", "AssembleWith": "None"},
        "TransformResources": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count},
    }
    if tags:
        job["Tags"] = tags
    requests.append(("create_transform_job", job))
    return requests


def sagemaker_client(region: str | None = None) -> Any:
    """A boto3 SageMaker client; credentials from the AWS chain, endpoint from ``AWS_ENDPOINT_URL``."""
    import boto3

    return boto3.client("sagemaker", region_name=region)


def send(requests: list[tuple[str, dict[str, Any]]], client: Any | None = None) -> list[dict[str, Any]]:
    """Send ``[(operation, kwargs)]`` in order; returns the responses (metadata stripped)."""
    client = client or sagemaker_client()
    out = []
    for operation, kwargs in requests:
        response = getattr(client, operation)(**kwargs)
        response.pop("ResponseMetadata", None)
        out.append(response)
    return out


def dry_run_json(requests: list[tuple[str, dict[str, Any]]]) -> str:
    """The requests as the JSON ``--dry-run`` prints: ``[{"operation", "request"}]``."""
    return json.dumps([{"operation": op, "request": kw} for op, kw in requests], indent=2)
