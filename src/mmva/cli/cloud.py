"""`mmva sagemaker train|deploy|transform|package`, `mmva sagemaker-entry`, `mmva copy`: thin CLI layers."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from mmva.cli import app, console

sagemaker_app = typer.Typer(help="Train and deploy on Amazon SageMaker (boto3 requests; --dry-run prints them).",
                            no_args_is_help=True)
app.add_typer(sagemaker_app, name="sagemaker")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=what)
        key, value = item.split("=", 1)
        out[key] = value
    return out


def _emit(requests: list, dry_run: bool, region: Optional[str]) -> None:
    from mmva.cloud.sagemaker import dry_run_json, sagemaker_client, send

    if dry_run:
        typer.echo(dry_run_json(requests))  # stdout: machine-readable
        return
    for (operation, _), response in zip(requests, send(requests, sagemaker_client(region))):
        arn = next((v for k, v in response.items() if k.endswith("Arn")), "")
        console.print(f"[green]{operation}[/green] {escape(str(arn))}")


@sagemaker_app.command("train")
def train_cmd(
    data: str = typer.Option(..., help="s3:// prefix of the corpus (MELD layout or manifests)."),
    output: str = typer.Option(..., help="s3:// prefix where SageMaker writes model.tar.gz."),
    image: str = typer.Option(..., help="ECR image URI of the mmva container."),
    role: str = typer.Option(..., help="IAM role ARN SageMaker assumes."),
    recipe: str = typer.Option("fit", help="fit: the multimodal model (mmva train); text: the default "
                               "text model that `mmva serve` loads (mmva train-text)."),
    config: str = typer.Option("tiny", help="Config preset or YAML path inside the image."),
    set_: list[str] = typer.Option([], "--set", help="Override section.key=value, e.g. train.epochs=3 "
                                   "or text.epochs=2 (repeatable)."),
    job_name: Optional[str] = typer.Option(None, help="Job name (default: mmva-train-<timestamp>)."),
    instance_type: str = typer.Option("ml.m5.2xlarge", help="ml.g5.* etc. need an image with CUDA torch."),
    instance_count: int = typer.Option(1, help="Machines; >1 trains with torchrun across them."),
    volume_gb: int = typer.Option(50),
    max_runtime: int = typer.Option(86400, help="Seconds."),
    spot: bool = typer.Option(False, help="Managed spot training (needs --checkpoint-s3)."),
    checkpoint_s3: Optional[str] = typer.Option(None, help="s3:// prefix synced with /opt/ml/checkpoints."),
    fast_file: bool = typer.Option(False, help="Stream the corpus (FastFile) instead of copying it."),
    env: list[str] = typer.Option([], help="Container environment KEY=VALUE (repeatable)."),
    region: Optional[str] = typer.Option(None),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the boto3 request as JSON, send nothing."),
) -> None:
    """Start a SageMaker training job running `python -m mmva.cloud.entry` in IMAGE."""
    from mmva.cloud.sagemaker import TrainingJobSpec, training_job_request, unique_name

    spec = TrainingJobSpec(
        job_name=job_name or unique_name("mmva-train"), image_uri=image, role_arn=role, data=data,
        output_path=output, config=config, overrides=tuple(set_), recipe=recipe, instance_type=instance_type,
        instance_count=instance_count, volume_size_gb=volume_gb, max_runtime_s=max_runtime, spot=spot,
        checkpoint_s3=checkpoint_s3, input_mode="FastFile" if fast_file else "File",
        environment=_pairs(env, "--env"))
    _emit([("create_training_job", training_job_request(spec))], dry_run, region)


@sagemaker_app.command("deploy")
def deploy_cmd(
    image: str = typer.Option(..., help="ECR image URI of the mmva container (serves on 8080)."),
    role: str = typer.Option(..., help="IAM role ARN SageMaker assumes."),
    model_data: Optional[str] = typer.Option(None, help="s3:// URI of a model.tar.gz (from a training job)."),
    checkpoint: Optional[str] = typer.Option(
        None, "--model", "--checkpoint",
        help="Or: a `mmva train` checkpoint or a default-model folder to package and upload first."),
    upload_to: Optional[str] = typer.Option(None, help="With --model: s3:// URI for model.tar.gz."),
    name: Optional[str] = typer.Option(None, help="Model/endpoint name (default: mmva-<timestamp>)."),
    instance_type: str = typer.Option("ml.m5.xlarge"),
    instance_count: int = typer.Option(1),
    async_output: Optional[str] = typer.Option(
        None, help="s3:// prefix for results: an asynchronous endpoint, for long videos."),
    async_failure: Optional[str] = typer.Option(None, help="s3:// prefix for failed async requests."),
    max_concurrent: int = typer.Option(2, help="Async: concurrent requests per instance."),
    env: list[str] = typer.Option([], help="Container environment KEY=VALUE (repeatable)."),
    region: Optional[str] = typer.Option(None),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the boto3 requests as JSON, send nothing."),
) -> None:
    """Create a SageMaker model, endpoint config and endpoint serving a trained mmva model."""
    from mmva.cloud.package import package_model
    from mmva.cloud.sagemaker import DeploySpec, deploy_requests, unique_name

    if bool(model_data) == bool(checkpoint):
        raise typer.BadParameter("give exactly one of --model-data and --model")
    if checkpoint:
        if not upload_to:
            raise typer.BadParameter("--model needs --upload-to s3://.../model.tar.gz")
        # The serving container (`mmva serve` on /opt/ml/model) loads a checkpoint or a default model.
        if not dry_run:
            package_model(checkpoint, upload_to)
            console.print(f"uploaded {escape(upload_to)}")
        model_data = upload_to
    spec = DeploySpec(name=name or unique_name("mmva"), image_uri=image, role_arn=role,
                      model_data=model_data, instance_type=instance_type, instance_count=instance_count,
                      async_output=async_output, async_failure=async_failure,
                      max_concurrent_per_instance=max_concurrent, environment=_pairs(env, "--env"))
    _emit(deploy_requests(spec), dry_run, region)


@sagemaker_app.command("transform")
def transform_cmd(
    input: str = typer.Option(..., "--input", help="s3:// prefix of the videos (each object is one request)."),
    output: str = typer.Option(..., "--output", help="s3:// prefix for the results: <key>.out, the analyze JSON."),
    model_name: Optional[str] = typer.Option(None, "--model-name",
                                             help="An existing SageMaker model (as `mmva sagemaker deploy` made)."),
    model_data: Optional[str] = typer.Option(None, help="Or: s3:// model.tar.gz to create the model from "
                                             "(with --image and --role)."),
    image: Optional[str] = typer.Option(None, help="With --model-data: ECR image URI of the mmva container."),
    role: Optional[str] = typer.Option(None, help="With --model-data: IAM role ARN SageMaker assumes."),
    job_name: Optional[str] = typer.Option(None, help="Job name (default: mmva-transform-<timestamp>)."),
    content_type: str = typer.Option("video/mp4", help="Content-Type of every request (application/octet-stream "
                                     "for mixed formats: the container sniffs them)."),
    instance_type: str = typer.Option("ml.m5.xlarge"),
    instance_count: int = typer.Option(1, help="Instances; SageMaker splits the objects between them."),
    max_concurrent: int = typer.Option(2, help="Requests at once per instance (the container's workers)."),
    max_payload_mb: int = typer.Option(100, help="Largest video, MB (SageMaker allows at most 100)."),
    timeout: int = typer.Option(3600, help="Seconds one video may take (SageMaker allows at most 3600)."),
    retries: int = typer.Option(1, help="Retries per video after a failed invocation (0-3)."),
    env: list[str] = typer.Option([], help="Container environment KEY=VALUE (repeatable)."),
    region: Optional[str] = typer.Option(None),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the boto3 requests as JSON, send nothing."),
) -> None:
    """Start a SageMaker Batch Transform job: every video of an s3:// prefix through the serving container."""
    from mmva.cloud.sagemaker import SageMakerRequestError, TransformSpec, transform_requests, unique_name

    if not (model_name or model_data):
        raise typer.BadParameter("give --model-name, or --model-data with --image and --role")
    spec = TransformSpec(job_name=job_name or unique_name("mmva-transform"), input=input, output=output,
                         model_name=model_name or unique_name("mmva-model"), image_uri=image, role_arn=role,
                         model_data=model_data, content_type=content_type, instance_type=instance_type,
                         instance_count=instance_count, max_concurrent=max_concurrent, max_payload_mb=max_payload_mb,
                         timeout_s=timeout, retries=retries, environment=_pairs(env, "--env"))
    try:
        requests = transform_requests(spec)
    except SageMakerRequestError as exc:
        raise typer.BadParameter(str(exc)) from None
    _emit(requests, dry_run, region)


@sagemaker_app.command("package")
def package_cmd(checkpoint: str = typer.Argument(..., help="Checkpoint (.safetensors, local or s3://) or "
                                                "default-model folder."),
                out: str = typer.Argument(..., help="model.tar.gz to write (local or s3://).")) -> None:
    """Build the model.tar.gz a SageMaker endpoint serves (flat files + mmva-model.json)."""
    from mmva.cloud.package import package_model

    console.print(escape(str(package_model(checkpoint, out))))


@app.command("sagemaker-entry")
def sagemaker_entry_cmd() -> None:
    """SageMaker training entry point (same as `python -m mmva.cloud.entry`)."""
    from mmva.cloud.entry import main

    raise typer.Exit(main([]))


@app.command("copy")
def copy_cmd(src: str = typer.Argument(..., help="Folder or prefix to copy from (local or s3://)."),
             dst: str = typer.Argument(..., help="Folder or prefix to copy to (local or s3://)."),
             only_changed: bool = typer.Option(True, "--only-changed/--all",
                                               help="Skip files already there unchanged.")) -> None:
    """Copy a folder between local disk and S3 (a corpus up, a run down), one atomic write per file."""
    from mmva.io.storage import copy_tree

    console.print(f"{copy_tree(src, dst, only_changed=only_changed)} file(s) copied to {escape(dst)}")
