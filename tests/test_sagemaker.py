"""SageMaker: requests built by `mmva sagemaker ...` and recorded by a real moto server; the model
archive layout; the training entry point run in a subprocess inside a simulated /opt/ml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
import torch
from typer.testing import CliRunner

from mmva.cli import app
from mmva.cloud import package
from mmva.cloud.sagemaker import (DeploySpec, SageMakerRequestError, TrainingJobSpec, TransformSpec, deploy_requests,
                                  training_job_request, transform_requests)
from mmva.config import load_config
from mmva.model.checkpoint import load_model, save_checkpoint
from mmva.model.multimodal import MultimodalSentimentAnalyzer

ROLE = "arn:aws:iam::123456789012:role/mmva-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mmva:latest"
runner = CliRunner()


def _cli_json(args: list[str]) -> list[dict]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_train_dry_run_prints_the_training_job_request():
    out = _cli_json(["sagemaker", "train", "--data", "s3://corpus/meld", "--output", "s3://models/out",
                     "--image", IMAGE, "--role", ROLE, "--config", "tiny", "--set", "train.epochs=3",
                     "--set", "data.batch_size=32", "--instance-count", "2", "--job-name", "mmva-t1",
                     "--spot", "--checkpoint-s3", "s3://models/ckpt", "--dry-run"])
    assert [r["operation"] for r in out] == ["create_training_job"]
    req = out[0]["request"]
    assert req["TrainingJobName"] == "mmva-t1"
    assert req["AlgorithmSpecification"]["ContainerEntrypoint"] == ["python", "-m", "mmva.cloud.entry"]
    assert req["HyperParameters"] == {"recipe": "fit", "config": "tiny", "train.epochs": "3",
                                      "data.batch_size": "32"}
    assert req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://corpus/meld"
    assert req["ResourceConfig"]["InstanceCount"] == 2
    assert req["EnableManagedSpotTraining"] is True
    assert req["CheckpointConfig"] == {"S3Uri": "s3://models/ckpt", "LocalPath": "/opt/ml/checkpoints"}


def test_requests_are_validated_before_sending():
    base = dict(job_name="mmva-1", image_uri=IMAGE, role_arn=ROLE, data="s3://b/d", output_path="s3://b/o")
    with pytest.raises(SageMakerRequestError, match="s3://"):
        training_job_request(TrainingJobSpec(**{**base, "data": "/local/corpus"}))
    with pytest.raises(SageMakerRequestError, match="job name"):
        training_job_request(TrainingJobSpec(**{**base, "job_name": "bad_name!"}))
    with pytest.raises(SageMakerRequestError, match="checkpoint"):
        training_job_request(TrainingJobSpec(**base, spot=True))
    result = runner.invoke(app, ["sagemaker", "deploy", "--image", IMAGE, "--role", ROLE, "--dry-run"])
    assert result.exit_code != 0 and "model-data" in result.output


def test_training_job_is_recorded_by_moto(aws_env):
    spec = TrainingJobSpec(job_name="mmva-train-moto", image_uri=IMAGE, role_arn=ROLE, data="s3://corpus/meld",
                           output_path="s3://models/out", overrides=("train.epochs=2",),
                           instance_type="ml.m5.xlarge")
    result = runner.invoke(app, ["sagemaker", "train", "--data", spec.data, "--output", spec.output_path,
                                 "--image", IMAGE, "--role", ROLE, "--set", "train.epochs=2",
                                 "--instance-type", "ml.m5.xlarge", "--job-name", spec.job_name])
    assert result.exit_code == 0, result.output
    desc = boto3.client("sagemaker").describe_training_job(TrainingJobName=spec.job_name)
    assert desc["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert desc["HyperParameters"]["train.epochs"] == "2"
    assert desc["RoleArn"] == ROLE
    assert desc["InputDataConfig"][0]["ChannelName"] == "training"
    assert desc["OutputDataConfig"]["S3OutputPath"] == "s3://models/out"
    assert desc["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"


def test_async_endpoint_is_recorded_by_moto(aws_env):
    result = runner.invoke(app, ["sagemaker", "deploy", "--image", IMAGE, "--role", ROLE, "--model-data",
                                 "s3://models/out/model.tar.gz", "--name", "mmva-ep-moto",
                                 "--async-output", "s3://models/async-out", "--max-concurrent", "4"])
    assert result.exit_code == 0, result.output
    sm = boto3.client("sagemaker")
    model = sm.describe_model(ModelName="mmva-ep-moto")
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://models/out/model.tar.gz"
    assert model["PrimaryContainer"]["Image"] == IMAGE
    config = sm.describe_endpoint_config(EndpointConfigName="mmva-ep-moto")
    assert config["ProductionVariants"][0]["ModelName"] == "mmva-ep-moto"
    assert config["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"] == "s3://models/async-out"
    assert config["AsyncInferenceConfig"]["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 4
    endpoint = sm.describe_endpoint(EndpointName="mmva-ep-moto")
    assert endpoint["EndpointConfigName"] == "mmva-ep-moto"


def test_realtime_endpoint_has_no_async_config():
    ops = dict(deploy_requests(DeploySpec(name="rt", image_uri=IMAGE, role_arn=ROLE,
                                          model_data="s3://m/model.tar.gz")))
    assert "AsyncInferenceConfig" not in ops["create_endpoint_config"]
    assert ops["create_endpoint"] == {"EndpointName": "rt", "EndpointConfigName": "rt"}


def test_batch_transform_dry_run_and_limits():
    (op,) = _cli_json(["sagemaker", "transform", "--input", "s3://archive/videos/", "--output", "s3://archive/out/",
                       "--model-name", "mmva-rt", "--job-name", "mmva-transform-1", "--instance-count", "3",
                       "--timeout", "1800", "--dry-run"])
    assert op["operation"] == "create_transform_job"
    job = op["request"]
    assert job["BatchStrategy"] == "SingleRecord" and job["TransformInput"]["SplitType"] == "None"
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix",
                                                                   "S3Uri": "s3://archive/videos/"}
    assert job["TransformOutput"]["Accept"] == "application/json"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 3}
    # The container's own request timeout follows the job's (docker/serve reads it).
    assert job["ModelClientConfig"]["InvocationsTimeoutInSeconds"] == 1800
    assert job["Environment"]["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "1800"
    base = dict(job_name="t", input="s3://a/v/", output="s3://a/o/", model_name="m")
    for bad, match in (({"max_payload_mb": 500}, "1-100 MB"), ({"timeout_s": 7200}, "1-3600 s"),
                       ({"input": "/local/videos"}, "s3://"), ({"model_data": "s3://m/model.tar.gz"}, "image")):
        with pytest.raises(SageMakerRequestError, match=match):
            transform_requests(TransformSpec(**{**base, **bad}))
    result = runner.invoke(app, ["sagemaker", "transform", "--input", "s3://a/v/", "--output", "s3://a/o/", "--dry-run"])
    assert result.exit_code != 0 and "model-name" in result.output


def test_batch_transform_is_recorded_by_moto(aws_env):
    result = runner.invoke(app, ["sagemaker", "transform", "--input", "s3://archive/videos/",
                                 "--output", "s3://archive/out/", "--model-data", "s3://models/out/model.tar.gz",
                                 "--image", IMAGE, "--role", ROLE, "--model-name", "mmva-batch-model",
                                 "--job-name", "mmva-transform-moto", "--instance-count", "2"])
    assert result.exit_code == 0, result.output
    sm = boto3.client("sagemaker")
    assert sm.describe_model(ModelName="mmva-batch-model")["PrimaryContainer"]["Image"] == IMAGE
    desc = sm.describe_transform_job(TransformJobName="mmva-transform-moto")
    assert desc["ModelName"] == "mmva-batch-model"
    assert desc["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://archive/videos/"
    assert desc["TransformOutput"]["S3OutputPath"] == "s3://archive/out/"
    assert desc["TransformResources"]["InstanceCount"] == 2


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    cfg = load_config("tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "best.safetensors"
    save_checkpoint(MultimodalSentimentAnalyzer(cfg), cfg, path, extra={"metrics": {"emotion_accuracy": 0.5}})
    return str(path)


def test_model_archive_layout_round_trips(tiny_checkpoint, tmp_path):
    archive = package.package_model(tiny_checkpoint, str(tmp_path / "model.tar.gz"))
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["mmva-model.json", "model.safetensors"]  # flat, as SageMaker extracts
    served = package.unpack_model(archive, tmp_path / "opt-ml-model")
    manifest = json.loads((served / "mmva-model.json").read_text())
    assert manifest["format"] == "mmva-model" and manifest["config_name"] == "tiny"
    assert manifest["metrics"] == {"emotion_accuracy": 0.5}
    model = load_model(package.find_model(served))
    original = load_model(tiny_checkpoint)
    for (k, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), k


def test_model_archive_uploads_to_s3_and_deploys_from_a_checkpoint(tiny_checkpoint, s3_bucket, tmp_path):
    uri = f"{s3_bucket}/models/a/model.tar.gz"
    result = runner.invoke(app, ["sagemaker", "deploy", "--image", IMAGE, "--role", ROLE,
                                 "--checkpoint", tiny_checkpoint, "--upload-to", uri, "--name", "mmva-from-ckpt"])
    assert result.exit_code == 0, result.output
    served = package.unpack_model(uri, tmp_path / "m")
    assert load_model(package.find_model(served)).config.name == "tiny"
    model = boto3.client("sagemaker").describe_model(ModelName="mmva-from-ckpt")
    assert model["PrimaryContainer"]["ModelDataUrl"] == uri


def test_find_model_explains_what_is_wrong(tmp_path):
    with pytest.raises(package.ModelPackageError, match="no .safetensors"):
        package.find_model(tmp_path)
    (tmp_path / "mmva-model.json").write_text(json.dumps({"checkpoint": "../escape.safetensors"}))
    with pytest.raises(package.ModelPackageError, match="missing"):
        package.find_model(tmp_path)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(package.ModelPackageError, match="bad.tar.gz"):
        package.unpack_model(str(bad), tmp_path / "x")


@pytest.mark.parametrize("stdlib_filter", [True, False], ids=["tarfile-data-filter", "python-3.11.2"])
def test_unpack_refuses_archives_that_escape_the_model_folder(tmp_path, monkeypatch, stdlib_filter):
    """Both with Python's own ``filter="data"`` and on interpreters without it (Debian 12's 3.11.2)."""
    import io

    if not stdlib_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    for name, kind in [("../evil.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)]:
        archive = tmp_path / f"bad-{kind!r}-{len(name)}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 3
                tar.addfile(info, io.BytesIO(b"bad"))
        with pytest.raises(package.ModelPackageError, match=archive.name):
            package.unpack_model(str(archive), tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()
    assert not list((tmp_path / "dest").iterdir())


# -- the training entry point in a simulated SageMaker container -----------------------------------
def _opt_ml(root: Path, corpus: Path, hyperparameters: dict[str, str], checkpoints: bool = False) -> Path:
    """The /opt/ml tree SageMaker prepares: channel data, hyperparameters, resource config."""
    import shutil

    ml = root / "opt" / "ml"
    if not (ml / "input" / "data" / "training").exists():
        shutil.copytree(corpus, ml / "input" / "data" / "training")
    config = ml / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    if checkpoints:
        (ml / "checkpoints").mkdir(exist_ok=True)
    return ml


def _run_entry(ml: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update({"SM_PREFIX": str(ml), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", "mmva.cloud.entry"], capture_output=True, text=True,
                          timeout=400, env=env)


@pytest.fixture(scope="module")
def sm_corpus(tmp_path_factory) -> Path:
    from mmva.data import make_corpus

    return make_corpus(tmp_path_factory.mktemp("smcorpus"), n_per_class={"train": 2, "dev": 1}, seed=2,
                       size=32, fps=4.0)


HPS = {"config": "tiny", "data.num_frames": "4", "data.frame_size": "32", "model.freeze_text": "true",
       "sagemaker_program": "ignored-by-mmva"}


def test_entry_point_trains_and_writes_a_servable_model(sm_corpus, tmp_path):
    """Spot-style job: checkpoints in /opt/ml/checkpoints; the restarted job resumes from them."""
    ml = _opt_ml(tmp_path, sm_corpus, {**HPS, "train.epochs": "1"}, checkpoints=True)
    first = _run_entry(ml)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert (ml / "checkpoints" / "run" / "checkpoints" / "last.ckpt").is_file()

    _opt_ml(tmp_path, sm_corpus, {**HPS, "train.epochs": "2"}, checkpoints=True)  # the job restarts
    second = _run_entry(ml)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    metrics = json.loads((ml / "output" / "data" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_completed"] == 2
    assert metrics["emotion"]["support"] == 7

    # SM_MODEL_DIR holds exactly what model.tar.gz must hold, and it loads as the trained model.
    model_dir = ml / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["mmva-model.json", "model.safetensors"]
    manifest = json.loads((model_dir / "mmva-model.json").read_text())
    assert manifest["config_name"] == "tiny"
    assert manifest["metrics"]["emotion"]["accuracy"] == pytest.approx(metrics["emotion"]["accuracy"])
    model = load_model(package.find_model(model_dir))
    assert model.config.name == "tiny" and model.config.data.frame_size == 32  # the job's overrides
    # metric lines for the job's MetricDefinitions
    assert f"dev/emotion_accuracy={metrics['emotion']['accuracy']:.6f}" in second.stdout


def test_entry_point_reads_sm_variables(sm_corpus, tmp_path):
    from mmva.cloud.entry import SageMakerEnv, torchrun_command

    channel = tmp_path / "chan"
    channel.mkdir()
    env = {"SM_CHANNEL_TRAINING": str(channel), "SM_MODEL_DIR": str(tmp_path / "m"),
           "SM_OUTPUT_DATA_DIR": str(tmp_path / "o"), "SM_HOSTS": '["algo-1", "algo-2"]',
           "SM_CURRENT_HOST": "algo-2", "SM_NUM_GPUS": "4", "SM_PREFIX": str(tmp_path / "none"),
           "SM_HPS": json.dumps({"config": "tiny", "train.epochs": "3", "train.lr": "0.01"})}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        sm = SageMakerEnv.from_environment()
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert sm.data_root() == str(channel) and sm.model_dir == str(tmp_path / "m")
    assert sm.hosts == ("algo-1", "algo-2") and sm.host_rank == 1 and sm.num_gpus == 4
    assert sm.overrides() == ["train.epochs=3", "train.lr=0.01"]
    assert sm.checkpoint_dir is None and sm.run_dir() == str(tmp_path / "o" / "run")
    cmd = torchrun_command(sm)
    assert cmd[-2:] == ["-m", "mmva.cloud.entry"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=4", "--master_addr=algo-1"} <= set(cmd)


def test_entry_point_failure_is_reported_to_sagemaker(sm_corpus, tmp_path, monkeypatch):
    from mmva.cloud.entry import main

    ml = _opt_ml(tmp_path, sm_corpus, {"config": "tiny", "epochs": "3"})  # not section.key
    monkeypatch.setenv("SM_PREFIX", str(ml))
    assert main([]) == 1
    failure = (ml / "output" / "failure").read_text()
    assert "epochs" in failure and "section.key" in failure


def test_text_recipe_writes_what_the_serving_container_loads(sm_corpus, tmp_path):
    """recipe=text: the default-model folder `mmva serve --model-dir /opt/ml/model` loads."""
    from mmva.model.default import load_default_model

    ml = _opt_ml(tmp_path, sm_corpus, {"recipe": "text", "text.epochs": "1", "text.batch_size": "8"})
    proc = _run_entry(ml)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    model_dir = ml / "model"
    assert {"config.json", "text_model.safetensors", "mmva-model.json"} <= {p.name for p in model_dir.iterdir()}
    assert json.loads((model_dir / "mmva-model.json").read_text())["kind"] == "default-model"
    served = package.find_model(model_dir)
    assert served == str(model_dir)
    out = load_default_model(served).predict(["What a great day!"])[0]
    assert out["emotion"].shape == (7,) and out["modalities"] == ["text"]
    # and it round-trips through model.tar.gz like a checkpoint does
    unpacked = package.unpack_model(package.package_model(str(model_dir), str(tmp_path / "m.tar.gz")),
                                    tmp_path / "unpacked")
    assert package.find_model(unpacked) == str(unpacked)
    assert (unpacked / "text_model.safetensors").read_bytes() == (model_dir / "text_model.safetensors").read_bytes()
