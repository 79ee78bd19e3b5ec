"""runtime: onnx — an encoder's image tower on ONNX Runtime, exported from its own weights.

`apply_runtime(model, spec)` exports the loaded torch tower (TorchScript-based exporter,
`dynamo=False`: it needs no onnxscript and works offline), caches the file on disk under a key
made of the weights' digest and the torch / onnx / onnxruntime versions (written to a temporary
file and `os.replace`d, so a crashed or concurrent export never leaves half a file under the
final name), and swaps the model's image forward for an ORT session. precision=int8 adds ORT's
dynamic quantisation (MatMul / Gemm weights to int8, CPU only) and measures it against the fp32
torch tower on the calibration set (clipfleet.models.calibration) before the model may serve. On
CUDA the export is fp16 and the session uses TensorRT (when installed) then CUDA. Random weights are
exported to a temporary directory: they differ on every start, so caching them would only fill
the disk. The text tower stays on torch.

precision=bf16 (runtime torch, CPU only) is here too because it shares the gate: the torch image
forward under bf16 autocast, measured against fp32 on the calibration set before it may serve.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipfleet.config import RuntimeChoice
from clipfleet.models.base import ImageEncoderModel, ModelLoadError
from clipfleet.models.calibration import calibration_images
from clipfleet.models.device import DevicePlan, inference, l2_normalize
from clipfleet.models.fingerprint import weights_digest

logger = logging.getLogger("clipfleet.models")

CACHE_ENV = "CLIPFLEET_ONNX_CACHE"
DEFAULT_CACHE = Path("~/.cache/clipfleet/onnx")
OPSET = 17
CALIBRATION_BATCH = 16


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def runtime_versions() -> str:
    import onnx
    import onnxruntime

    return f"torch{torch.__version__}-onnx{onnx.__version__}-ort{onnxruntime.__version__}"


def cache_key(tower: torch.nn.Module, input_shape: tuple[int, ...], fp16: bool) -> str:
    """Weights + input shape + export dtype + tool versions: any change makes a new file."""
    parts = [weights_digest(tower), "x".join(map(str, input_shape)), "fp16" if fp16 else "fp32"]
    parts += [runtime_versions(), f"opset{OPSET}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _replace_atomically(build, final: Path) -> Path:
    """Run build(tmp_path) next to `final`, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(handle)
    try:
        build(Path(tmp))
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return final


def export_tower(tower: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    # Grad on: without it nn.MultiheadAttention takes its fused fast path, which has no ONNX op.
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            tower,
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
    )


def onnx_files(
    tower: torch.nn.Module, example: torch.Tensor, precision: str, directory: Path
) -> Path:
    """The cached file for this tower and precision, exporting (and quantising) when missing."""
    key = cache_key(tower, tuple(example.shape[1:]), example.dtype == torch.float16)
    fp32 = directory / f"{key}.onnx"
    if not fp32.exists():
        _replace_atomically(lambda tmp: export_tower(tower, example, tmp), fp32)
    if precision == "fp32":
        return fp32
    int8 = directory / f"{key}.int8.onnx"
    if not int8.exists():
        _replace_atomically(lambda tmp: quantize_int8(fp32, tmp), int8)
    return int8


def providers_for(plan: DevicePlan, directory: Path) -> list[Any]:
    import onnxruntime

    if plan.device.type != "cuda":
        return ["CPUExecutionProvider"]
    available = set(onnxruntime.get_available_providers())
    device_id = plan.device.index or 0
    chosen: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        trt = {
            "device_id": device_id,
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(directory / "trt"),
        }
        chosen.append(("TensorrtExecutionProvider", trt))
    if "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            "runtime onnx on CUDA needs onnxruntime-gpu (its CUDAExecutionProvider); install it "
            "instead of onnxruntime, or use runtime torch"
        )
    chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
    return [*chosen, "CPUExecutionProvider"]


class OnnxImageForward:
    """(N, C, H, W) torch pixels -> (N, D) torch features through an ORT session."""

    def __init__(self, path: Path, plan: DevicePlan, threads: int, directory: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Don't spin between forwards: the cores belong to whichever encoder holds the lease.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.plan = plan
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=providers_for(plan, directory)
        )
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.fp16 = self.session.get_inputs()[0].type == "tensor(float16)"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.device.type == "cuda":
            return self._run_on_cuda(pixels)
        array = pixels.detach().numpy().astype(np.float16 if self.fp16 else np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).float()

    def _run_on_cuda(self, pixels: torch.Tensor) -> torch.Tensor:
        """IO binding: ORT reads and writes torch's CUDA memory, no host round trip."""
        dtype = torch.float16 if self.fp16 else torch.float32
        pixels = pixels.to(dtype).contiguous()
        output_dim = self.session.get_outputs()[0].shape[-1]
        features = torch.empty((pixels.shape[0], output_dim), dtype=dtype, device=pixels.device)
        binding = self.session.io_binding()
        element = np.float16 if self.fp16 else np.float32
        index = pixels.device.index or 0
        binding.bind_input(
            self.input_name, "cuda", index, element, tuple(pixels.shape), pixels.data_ptr()
        )
        binding.bind_output(
            self.session.get_outputs()[0].name,
            "cuda",
            index,
            element,
            tuple(features.shape),
            features.data_ptr(),
        )
        self.session.run_with_iobinding(binding)
        return features.float()


@contextlib.contextmanager
def _export_dir(random_weights: bool, directory: Path | None) -> Iterator[Path]:
    if not random_weights:
        yield directory or cache_dir()
        return
    with tempfile.TemporaryDirectory(prefix="clipfleet-onnx-") as tmp:
        yield Path(tmp)


def calibration_pixels(model: ImageEncoderModel) -> list[torch.Tensor]:
    return [model.preprocess_image(image) for image in calibration_images()]


def cosines(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.sum(ours * reference, axis=1)


def _embed(model: ImageEncoderModel, forward, pixels: list[torch.Tensor]) -> np.ndarray:
    rows = []
    for start in range(0, len(pixels), CALIBRATION_BATCH):
        batch = torch.stack(pixels[start : start + CALIBRATION_BATCH]).to(model.plan.device)
        with inference(model.plan):
            rows.append(l2_normalize(forward(batch)).cpu().numpy())
    return np.concatenate(rows)


def check_against_fp32(
    model: ImageEncoderModel, forward, floor: float, precision: str = "int8"
) -> dict[str, Any]:
    """`forward` (int8 or bf16) vs the fp32 torch tower on the calibration images; raises
    below `floor` (the spec's `<precision>_min_cosine`)."""
    pixels = calibration_pixels(model)
    found = cosines(_embed(model, forward, pixels), _embed(model, model._image_features, pixels))
    report = {
        "images": len(pixels),
        "min": round(float(found.min()), 6),
        "mean": round(float(found.mean()), 6),
        "floor": floor,
    }
    if found.min() < floor:
        raise ModelLoadError(
            f"{precision} {model.info.model} reaches cosine {found.min():.4f} against fp32 on "
            f"the calibration set, below {precision}_min_cosine {floor}: serve it in fp32 "
            "(precision: fp32) or lower the floor if that accuracy is acceptable"
        )
    return report


class Bf16ImageForward:
    """The model's torch image forward under CPU bf16 autocast; features back in fp32."""

    def __init__(self, forward) -> None:
        self.forward = forward

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            return self.forward(pixels).float()


def apply_bf16(model: ImageEncoderModel, spec: RuntimeChoice) -> ImageEncoderModel:
    """precision=bf16 on runtime torch: CPU only, gated on the calibration set like int8."""
    if model.plan.device.type != "cpu":
        raise ModelLoadError("precision bf16 is CPU autocast; on CUDA runtime torch runs fp16")
    forward = Bf16ImageForward(model._image_features)
    report = check_against_fp32(model, forward, spec.bf16_min_cosine, "bf16")
    model._image_features = forward  # the instance's forward; preprocessing is unchanged
    model.info.extra.update(
        {"runtime": "torch", "precision": "bf16", "bf16_cosine_vs_fp32": report}
    )
    logger.info("%s image tower in bf16 autocast: %s", model.info.model, report)
    return model


def apply_runtime(
    model: ImageEncoderModel, spec: RuntimeChoice, directory: Path | None = None
) -> ImageEncoderModel:
    """Run `model`'s image tower on the spec's runtime; records the choice in its details."""
    if spec.runtime == "torch" and spec.precision == "bf16":
        return apply_bf16(model, spec)
    if spec.runtime == "torch":
        model.info.extra.update({"runtime": "torch", "precision": "fp32"})
        return model
    plan = model.plan
    if spec.precision == "int8" and plan.device.type != "cpu":
        raise ModelLoadError(
            "precision int8 is ORT dynamic quantisation, CPU only; on CUDA runtime onnx runs fp16"
        )
    started = time.perf_counter()
    tower = model.image_tower()
    example = model.preprocess_image(np.zeros((64, 64, 3), np.uint8))[None].to(plan.device)
    if plan.fp16:
        tower, example = copy.deepcopy(tower).half(), example.half()
    try:
        with _export_dir(model.info.random_weights, directory) as where:
            path = onnx_files(tower, example, spec.precision, where)
            forward = OnnxImageForward(path, plan, torch.get_num_threads(), where)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"could not run {model.info.model} on ONNX Runtime ({exc}); use runtime torch"
        ) from exc
    details: dict[str, Any] = {
        "runtime": "onnx",
        "precision": "fp16" if forward.fp16 else spec.precision,
        "onnx_providers": forward.providers,
        "onnx_file": None if model.info.random_weights else str(path),
    }
    if spec.precision == "int8":
        details["int8_cosine_vs_fp32"] = check_against_fp32(model, forward, spec.int8_min_cosine)
    details["onnx_setup_seconds"] = round(time.perf_counter() - started, 3)
    model._image_features = forward  # the instance's forward; preprocessing is unchanged
    model.info.extra.update(details)
    logger.info("%s image tower on ONNX Runtime: %s", model.info.model, details)
    return model
