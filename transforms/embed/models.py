"""Model specs and loading: the text model's pooled Embedding layer and headless image CNNs.

Loading lives here and only here. A spec is a small frozen, picklable description of a model;
`load_text_embedder` / `load_image_embedder` turn it into an embedder that runs fixed-shape
batches through a `tf.function`. The Beam DoFns acquire embedders through `shared.Shared`, so
every thread of a worker process uses one copy, loaded once (see `transforms.embed.dofns`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import threading
import zipfile
from typing import Callable, ClassVar, Mapping, Optional

import numpy as np

from transforms.embed import backends, decode
from transforms.errors import UserError
from transforms.io import fileio

__all__ = [
    "ModelConfigError",
    "model_fields",
    "NETWORKS",
    "Network",
    "TextModelSpec",
    "ImageModelSpec",
    "TextEmbedder",
    "ImageEmbedder",
    "load_text_embedder",
    "load_image_embedder",
    "MAX_TEXT_BATCH_SIZE",
    "MAX_IMAGE_BATCH_SIZE",
    "batch_buckets",
    "bucket_for",
    "check_batch_size",
    "pinned_spec",
    "PREPROCESSING_MODES",
    "preprocessing_layers",
    "build_base_network",
    "TEXT_INPUT",
    "TEXT_VECTORIZE_LAYER",
    "WORD_EMBEDDING_LAYER",
    "TEXT_EMBEDDING_LAYER",
    "TEXT_OUTPUT_LAYER",
    "TEXT_MODEL_LAYER_TYPES",
    "text_model_layer",
]

# The text model's contract: the names `train-text` gives its input and layers, and that the job
# (`load_text_embedder`) and the tools (word vectors, similar words) look up.
TEXT_INPUT = "text"  # one string per row, shape (1,)
TEXT_VECTORIZE_LAYER = "vectorize"  # TextVectorization: standardisation, split and the vocabulary
WORD_EMBEDDING_LAYER = "embedding"  # Embedding: row i is the vector of vocabulary entry i
TEXT_EMBEDDING_LAYER = "text_embedding"  # GlobalAveragePooling1D (masked mean): the record's embedding
TEXT_OUTPUT_LAYER = "sentiment"  # the training head (a sigmoid), not used by the job
# The Keras class of each looked-up layer, to find it in a model whose layers were named otherwise.
TEXT_MODEL_LAYER_TYPES = {
    TEXT_VECTORIZE_LAYER: "TextVectorization",
    WORD_EMBEDDING_LAYER: "Embedding",
    TEXT_EMBEDDING_LAYER: "GlobalAveragePooling1D",
}

_LOGGER = logging.getLogger(__name__)


class ModelConfigError(UserError, ValueError):
    """A model setting whose value cannot work, named by the spec's own field, never by a CLI flag.

    `modality` says whose field ("text": `TextModelSpec`, "image": `ImageModelSpec`), `field` which
    one (e.g. "layer"), `value` the value at fault and `reason` why. A reason mentions another field
    of the same spec as `{field}` (e.g. "pass {unsafe_loading} only if you trust this file").
    `describe(names)` writes the message with the caller's names for the fields: the command line
    maps them to its flags (`pipeline.flags_map`), the public API to its arguments
    (`transforms.embed.api`). `str()` uses `names` when given (the API raises its errors so),
    else the spec's own names (`ImageModelSpec.layer 'x': ...`).
    """

    def __init__(
        self, field: str, value: object, reason: str, modality: str = "image", names: Optional[Mapping[str, str]] = None
    ):
        if modality not in _SPEC_FIELDS or field not in _SPEC_FIELDS[modality]:
            raise ValueError(f"{modality}.{field} is not a field of a model spec")
        self.field, self.value, self.reason, self.modality, self.names = field, value, reason, modality, names
        super().__init__(self.describe())

    @property
    def key(self) -> str:
        """The field as "<modality>.<field>" (e.g. "text.layer"), as `describe`'s names are keyed."""
        return f"{self.modality}.{self.field}"

    def describe(self, names: Optional[Mapping[str, str]] = None) -> str:
        """The one-line message, each field called by `names[key]` (default: the error's own `names`,
        else `TextModelSpec.path`, ...)."""

        names = self.names if names is None else names

        def name(field: str) -> str:
            key = f"{self.modality}.{field}"
            return (names or {}).get(key) or f"{_SPEC_CLASS[self.modality]}.{field}"

        fields = _SPEC_FIELDS[self.modality]
        reason = re.sub(r"\{(\w+)\}", lambda m: name(m.group(1)) if m.group(1) in fields else m.group(0), self.reason)
        return f"{name(self.field)} {self.value!r}: {reason}"


# What a Keras Applications module's preprocess_input does to 0..255 RGB pixels:
#   tf:    x / 127.5 - 1
#   caffe: RGB -> BGR, minus the ImageNet mean of each BGR channel
#   torch: x / 255, minus the ImageNet means, over the ImageNet standard deviations
#   none:  nothing (the network rescales inside itself)
PREPROCESSING_MODES = ("tf", "caffe", "torch", "none")
_CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)
_TORCH_MEANS = (0.485, 0.456, 0.406)
_TORCH_STDS = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Network:
    """A Keras Applications network: how to build it and how to feed it.

    The job feeds it through `preprocess()` (Keras' own `preprocess_input`); `train-image` puts
    `preprocessing_layers(network)` (built-in layers computing the same, after `preprocessing`)
    inside the models it saves.
    """

    name: str
    module: str  # keras.applications submodule holding preprocess_input
    default_size: int
    preprocessing: str  # what that preprocess_input does: one of PREPROCESSING_MODES
    has_alpha: bool = False
    fixed_size: bool = False  # NASNetMobile only takes its own size with imagenet weights

    def __post_init__(self):
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f"{self.name}: preprocessing {self.preprocessing!r} is not one of {PREPROCESSING_MODES}")

    def builder(self) -> Callable:
        import keras

        return getattr(keras.applications, self.name)

    def preprocess(self) -> Callable:
        import keras

        return getattr(keras.applications, self.module).preprocess_input


NETWORKS: dict[str, Network] = {
    n.name: n
    for n in [
        Network("MobileNet", "mobilenet", 224, "tf", has_alpha=True),
        Network("MobileNetV2", "mobilenet_v2", 224, "tf", has_alpha=True),
        Network("MobileNetV3Small", "mobilenet_v3", 224, "none", has_alpha=True),
        Network("MobileNetV3Large", "mobilenet_v3", 224, "none", has_alpha=True),
        Network("ResNet50", "resnet50", 224, "caffe"),
        Network("ResNet101", "resnet", 224, "caffe"),
        Network("ResNet152", "resnet", 224, "caffe"),
        Network("ResNet50V2", "resnet_v2", 224, "tf"),
        Network("VGG16", "vgg16", 224, "caffe"),
        Network("VGG19", "vgg19", 224, "caffe"),
        Network("InceptionV3", "inception_v3", 299, "tf"),
        Network("InceptionResNetV2", "inception_resnet_v2", 299, "tf"),
        Network("Xception", "xception", 299, "tf"),
        Network("DenseNet121", "densenet", 224, "torch"),
        Network("EfficientNetB0", "efficientnet", 224, "none"),
        Network("EfficientNetB1", "efficientnet", 240, "none"),
        Network("EfficientNetB2", "efficientnet", 260, "none"),
        Network("EfficientNetB3", "efficientnet", 300, "none"),
        Network("EfficientNetV2B0", "efficientnet_v2", 224, "none"),
        Network("ConvNeXtTiny", "convnext", 224, "none"),
        Network("NASNetMobile", "nasnet", 224, "tf", fixed_size=True),
    ]
}


def preprocessing_layers(network: Network) -> list:
    """Built-in Keras layers computing `network`'s preprocess_input on 0..255 RGB float pixels.

    Built-in layers only (Rescaling, Normalization, or a fixed 1x1 Conv2D for the RGB->BGR "caffe"
    networks), so a model holding them loads in Keras safe mode; empty when the network needs none.
    """
    import keras

    mode = network.preprocessing
    if mode == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")]
    if mode == "torch":
        means = [255.0 * m for m in _TORCH_MEANS]
        variances = [(255.0 * s) ** 2 for s in _TORCH_STDS]
        return [keras.layers.Normalization(mean=means, variance=variances, name="preprocess")]
    if mode == "caffe":
        # Channel c of the output is input channel 2 - c (RGB -> BGR), minus the ImageNet mean of that BGR channel.
        kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
        for c in range(3):
            kernel[0, 0, 2 - c, c] = 1.0
        layer = keras.layers.Conv2D(
            3,
            1,
            name="preprocess",
            trainable=False,
            kernel_initializer=keras.initializers.Constant(kernel),
            bias_initializer=keras.initializers.Constant(-np.asarray(_CAFFE_MEANS_BGR, dtype=np.float32)),
        )
        return [layer]
    return []


# Largest batch sizes accepted (--text-batch-size, --image-batch-size; EmbedText/EmbedImages'
# batch_size). A model batch is held whole: 65,536 texts of a few KB are a few hundred MB; 4,096
# images at 224x224 are 616 MB of pixels (2.4 GB as float32) before the network's activations.
# Larger batches make no model faster on a CPU; on a GPU a few hundred images fill it.
MAX_TEXT_BATCH_SIZE = 65536
MAX_IMAGE_BATCH_SIZE = 4096


def check_batch_size(name: str, value, maximum: int) -> Optional[str]:
    """Why `value` cannot be a batch size of at most `maximum` (`name` says whose), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return f"{name} must be a positive integer, got {value!r}"
    if value > maximum:
        return f"{name} {value:,} is larger than the maximum {maximum:,} (a batch is held in memory whole)"
    return None


@dataclasses.dataclass(frozen=True)
class TextModelSpec:
    """A text encoder whose input is a batch of strings (local or gs://): a model made by
    `train-text` (its pooled `text_embedding` layer), another `.keras` model cut at `layer`, or a
    SavedModel directory (its serving signature; `layer` names the output, default the only float
    output of rank 2). Implements `interface.ModelSpec`."""

    path: str
    batch_size: int = 1024
    unsafe_loading: bool = False
    layer: Optional[str] = None  # .keras: the layer whose output is the embedding; SavedModel: the output key

    modality: ClassVar[str] = "text"

    def cache_key(self) -> str:
        return f"text:{self.path}:{self.batch_size}:{self.unsafe_loading}:{self.layer}"

    def load_model(self) -> TextEmbedder:
        return load_text_embedder(self)


@dataclasses.dataclass(frozen=True)
class ImageModelSpec:
    """A headless image network: a Keras Applications name, or a user's `.keras` classifier."""

    model: str  # network name (see NETWORKS) or path to a .keras file
    weights: str = "imagenet"  # imagenet | none | path to a weights file (networks only)
    image_size: Optional[int] = None
    alpha: Optional[float] = None
    layer: Optional[str] = None  # user models: the layer whose output is the embedding
    preprocess: Optional[str] = None  # user models: a network name whose preprocess_input to apply
    batch_size: int = 32
    unsafe_loading: bool = False
    seed: int = 0  # random initialisation when weights == "none", so every worker agrees
    backend: str = "auto"  # auto | tensorflow | openvino (see transforms.embed.backends)
    precision: str = "f32"  # f32 | bf16 (bf16: OpenVINO only)
    decoder: str = "pillow"  # pillow | opencv (transforms.embed.decode: how JPEGs are decoded and resized)

    modality: ClassVar[str] = "image"

    @property
    def is_network(self) -> bool:
        return self.model in NETWORKS

    def cache_key(self) -> str:
        return "image:" + repr(dataclasses.astuple(self))

    def load_model(self) -> ImageEmbedder:
        return load_image_embedder(self)


# The fields a ModelConfigError may name, per modality (its `describe` names them).
_SPEC_CLASS = {"text": "TextModelSpec", "image": "ImageModelSpec"}
_SPEC_FIELDS = {
    "text": frozenset(f.name for f in dataclasses.fields(TextModelSpec)),
    "image": frozenset(f.name for f in dataclasses.fields(ImageModelSpec)),
}


def model_fields(modality: str) -> frozenset:
    """The fields of the spec of `modality` ("text", "image"): what a ModelConfigError may name."""
    return _SPEC_FIELDS[modality]


# The field that names the model file of each modality.
_MODEL_FIELD = {"text": "path", "image": "model"}


def _weights_fingerprint(model) -> str:
    """sha256 over every weight array: the model's identity when there is no file to hash."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.asarray(weight.numpy())
        digest.update(str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _load_keras_file(path: str, modality: str, unsafe: bool):
    """The Keras model at `path` (local or gs://); errors name the modality's model field."""
    import keras

    field = _MODEL_FIELD[modality]

    if not path.endswith(".keras") and not path.endswith(".h5"):
        raise ModelConfigError(field, path, "expected a Keras model file ending in .keras (or .h5)", modality)
    try:
        local = fileio.local_copy(path)
    except Exception as exc:  # missing file, unreadable bucket
        raise ModelConfigError(field, path, f"cannot read the model file ({type(exc).__name__}: {exc})", modality) from exc
    if not os.path.exists(local):
        raise ModelConfigError(field, path, "no such file", modality)
    if path.endswith(".keras") and not zipfile.is_zipfile(local):  # Keras would say "File not found" (issue 12)
        raise ModelConfigError(
            field, path, "not a complete .keras file: it is not a valid zip archive (truncated or corrupt copy?)", modality
        )
    try:
        return keras.saving.load_model(local, compile=False, safe_mode=not unsafe)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower() or "lambda" in str(exc).lower():
            raise ModelConfigError(
                field,
                path,
                "the model contains custom Python code, which safe mode does not load; "
                "pass {unsafe_loading} only if you trust this file",
                modality,
            ) from exc
        raise ModelConfigError(field, path, f"not a loadable Keras model ({exc})", modality) from exc
    except Exception as exc:
        raise ModelConfigError(field, path, f"not a loadable Keras model ({type(exc).__name__}: {exc})", modality) from exc


def text_model_layer(model, name: str):
    """The layer of a text model that the contract calls `name` (see TEXT_MODEL_LAYER_TYPES): the
    layer of that name, else the (first) layer of its Keras class; None when there is none."""
    if model is None:  # a SavedModel encoder: no Keras layers to look up
        return None
    try:
        return model.get_layer(name)
    except ValueError:
        pass
    kind = TEXT_MODEL_LAYER_TYPES[name]
    found = [layer for layer in model.layers if type(layer).__name__ == kind]
    return found[0] if found else None


class TextEmbedder:
    """Raw strings in, float32 vectors out, in batches of at most `spec.batch_size` (never padded).

    `forward` takes a `tf.string` tensor of shape (n,) or (n, 1) (`input_rank` 1 or 2) and returns
    (n, dimension) floats: the pooled Embedding layer of a `train-text` model, another Keras model
    cut at a layer, or a SavedModel's serving signature. Implements `interface.Embedder`.
    """

    def __init__(
        self,
        spec: TextModelSpec,
        forward: Callable,
        input_rank: int,
        dimension: int,
        model_name: str,
        model_sha256: str,
        full_model=None,
        sequence_length: Optional[int] = None,
    ):
        self.spec = spec
        self.model_sha256 = model_sha256
        self.model_name = model_name
        self.full_model = full_model  # the whole Keras model (the word-vector tools read its layers); None for a SavedModel
        self.dimension = dimension
        self.sequence_length = sequence_length
        self._input_rank = input_rank
        self._forward = forward

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings (len(texts), dimension) float32; batches longer than batch_size are split,
        shorter ones run at their own size (no padding)."""
        import tensorflow as tf

        size = self.spec.batch_size
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), size):
            chunk = list(texts[start : start + size])
            n = len(chunk)
            array = np.array(chunk, dtype=object)
            if self._input_rank == 2:
                array = array.reshape(-1, 1)
            result = np.asarray(self._forward(tf.constant(array, dtype=tf.string)))
            if result.shape != (n, self.dimension):  # e.g. an encoder that drops or adds rows
                raise ValueError(f"the model returned shape {result.shape} for {n} texts, not ({n}, {self.dimension})")
            out[start : start + n] = result
        return out


SMALLEST_IMAGE_BUCKET = 8


def batch_buckets(batch_size: int, smallest: int = SMALLEST_IMAGE_BUCKET) -> list[int]:
    """The batch shapes an image model is run at: powers of two from `smallest`, then `batch_size`
    itself (e.g. 32 -> [8, 16, 32]; 100 -> [8, 16, 32, 64, 100]; 4 -> [4])."""
    sizes, size = [], smallest
    while size < batch_size:
        sizes.append(size)
        size *= 2
    return sizes + [batch_size]


def bucket_for(rows: int, batch_size: int, smallest: int = SMALLEST_IMAGE_BUCKET) -> int:
    """The smallest of `batch_buckets(batch_size)` that holds `rows` (at most batch_size) rows."""
    if rows >= batch_size:
        return batch_size
    size = smallest
    while size < rows:
        size *= 2
    return min(size, batch_size)


class ImageEmbedder:
    """uint8 RGB pixel batches in, headless-network vectors out, in fixed-size batches.

    The network (with its preprocessing) is traced once as a `tf.function` for the fixed batch
    shape; `spec.backend` decides whether TensorFlow runs it or OpenVINO runs its conversion
    (`transforms.embed.backends`). `backend`, `precision` and `backend_details` say what runs, and why.
    """

    def __init__(self, spec: ImageModelSpec, model, preprocess: Optional[Callable], model_name: str, model_sha256: str):
        import keras
        import tensorflow as tf

        if spec.backend not in backends.BACKENDS:
            raise ModelConfigError("backend", spec.backend, f"expected one of {', '.join(backends.BACKENDS)}")
        if spec.precision not in backends.PRECISIONS:
            raise ModelConfigError("precision", spec.precision, f"expected one of {', '.join(backends.PRECISIONS)}")
        if spec.backend == "tensorflow" and spec.precision != "f32":
            raise ModelConfigError("precision", spec.precision, "only the openvino backend runs bf16; TensorFlow runs f32")
        try:
            decode.require_decoder(spec.decoder)
        except ValueError:
            raise ModelConfigError("decoder", spec.decoder, f"expected one of {', '.join(decode.DECODERS)}") from None
        except decode.DecoderUnavailable as exc:
            raise ModelConfigError("decoder", spec.decoder, str(exc)) from exc
        self.spec = spec
        self.model_name = model_name
        self.weights_sha256 = model_sha256
        shape = model.inputs[0].shape
        self.input_size = (int(shape[1]), int(shape[2]))
        output = model.outputs[0]
        if len(output.shape) == 4:  # a feature map: pool it to one vector per image
            output = keras.layers.GlobalAveragePooling2D(name="embedding_pool")(output)
            model = keras.Model(model.inputs, output)
        elif len(output.shape) != 2:
            raise ModelConfigError(
                "layer", spec.layer, f"output has shape {tuple(output.shape)}; expected (batch, dim) or a feature map"
            )
        self.dimension = int(output.shape[-1])
        self._model = model

        def forward(pixels):
            x = tf.cast(pixels, tf.float32)
            if preprocess is not None:
                x = preprocess(x)
            return model(x, training=False)

        # One traced function, one concrete (fixed-shape) function per batch bucket (`batch_buckets`):
        # the full batch at load, the smaller buckets when a short batch first needs one.
        signature = [tf.TensorSpec([spec.batch_size, *self.input_size, 3], tf.uint8, name="pixels")]
        self._forward = tf.function(forward, input_signature=signature)  # the full batch
        self._function = tf.function(forward)  # the smaller buckets
        self._forwards: dict = {}
        self._buckets_lock = threading.Lock()
        self.backend, self.precision = "tensorflow", "f32"
        self.concurrent_calls = 1  # model calls that may run at once (OpenVINO: one per stream)
        self.backend_details: dict = {"backend_requested": spec.backend, "precision_requested": spec.precision}
        self._openvino: Optional[backends.OpenVINOForward] = None
        self._openvino_buckets: dict[int, Optional[backends.OpenVINOForward]] = {}
        if spec.backend != "tensorflow":
            self._try_openvino()
        # Precision is part of the model's identity (bf16 moves the vectors, cosine ~0.99), the
        # backend is not (OpenVINO f32 differs from TensorFlow by ~1e-6 relative): an incremental
        # run that switches backend at f32 reuses earlier embeddings, one that switches to bf16 does not.
        # So is a non-default decoder (OpenCV's resize moves pixels by ~1/255, vectors to cosine ~0.99).
        tags = ([] if self.precision == "f32" else [self.precision]) + (
            [] if spec.decoder == "pillow" else [f"decoder={spec.decoder}"]
        )
        self.model_sha256 = hashlib.sha256("+".join([model_sha256, *tags]).encode()).hexdigest() if tags else model_sha256
        self.backend_details.update(backend=self.backend, precision=self.precision, decoder=spec.decoder)
        if self.model_sha256 != model_sha256:
            self.backend_details["weights_sha256"] = model_sha256

    def _try_openvino(self) -> None:
        """Convert the traced forward pass to OpenVINO; on failure, fall back (auto) or raise (openvino)."""
        spec = self.spec
        try:
            compiled = backends.compile_openvino(self._forward.get_concrete_function(), spec.precision)
        except (backends.BackendUnavailable, backends.ConversionFailed) as exc:
            if spec.backend == "openvino":
                raise ModelConfigError(
                    "backend",
                    "openvino",
                    f"{self.model_name} cannot run on OpenVINO ({exc}); use {{backend}} tensorflow or auto",
                ) from exc
            why = (
                "OpenVINO is not installed" if isinstance(exc, backends.BackendUnavailable) else "it does not convert to OpenVINO"
            )
            note = f"{self.model_name} runs on TensorFlow: {why} ({exc})"
            if spec.precision != "f32":
                note += f" at f32 ({spec.precision} needs OpenVINO)"
            _LOGGER.warning("%s", note)
            self.backend_details["backend_note"] = note
            return
        self._openvino = compiled
        self._openvino_buckets = {spec.batch_size: compiled}
        self.backend, self.precision = "openvino", compiled.precision
        self.concurrent_calls = compiled.concurrent_calls
        self.backend_details.update(
            openvino_version=compiled.version,
            convert_seconds=round(compiled.convert_seconds, 2),
            compile_seconds=round(compiled.compile_seconds, 2),
            concurrent_calls=compiled.concurrent_calls,
        )
        _LOGGER.info(
            "Image model %s runs on OpenVINO %s at %s: converted in %.1f s, compiled in %.1f s, %d concurrent call(s)",
            self.model_name,
            compiled.version,
            compiled.precision,
            compiled.convert_seconds,
            compiled.compile_seconds,
            compiled.concurrent_calls,
        )
        if compiled.precision != spec.precision:
            _LOGGER.warning("OpenVINO runs %s at %s, not the requested %s", self.model_name, compiled.precision, spec.precision)
        # The TensorFlow copy of the network is no longer needed: free its weights and graph (smaller
        # buckets are compiled from the converted model, `OpenVINOForward.for_batch`).
        self._forward = None
        self._forwards = {}
        self._function = None
        self._model = None

    def _concrete(self, batch: int):
        import tensorflow as tf

        signature = tf.TensorSpec([batch, *self.input_size, 3], tf.uint8, name="pixels")
        return self._function.get_concrete_function(signature)

    def _runner(self, bucket: int) -> tuple[int, Callable]:
        """(batch size, function) that runs a batch of `bucket` rows: the bucket's own compiled shape,
        built on first use; the full batch where OpenVINO cannot reshape the network."""
        with self._buckets_lock:
            if self._openvino is not None:
                if bucket not in self._openvino_buckets:
                    self._openvino_buckets[bucket] = self._openvino.for_batch(bucket)
                    if self._openvino_buckets[bucket] is None:
                        _LOGGER.warning(
                            "%s: OpenVINO cannot run batches of %d; they are padded to %d",
                            self.model_name,
                            bucket,
                            self.spec.batch_size,
                        )
                forward = self._openvino_buckets[bucket]
                return (bucket, forward) if forward is not None else (self.spec.batch_size, self._openvino)
            if bucket == self.spec.batch_size:
                return bucket, lambda batch: self._forward(batch).numpy()
            if bucket not in self._forwards:
                self._forwards[bucket] = self._concrete(bucket)
            concrete = self._forwards[bucket]
            return bucket, lambda batch: concrete(batch).numpy()

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings (n, dimension) float32 for a uint8 batch (n, h, w, 3).

        Batches longer than batch_size are split; a shorter one is padded only to its bucket (the
        next power of two, `batch_buckets`), so it costs memory for about its own size while the
        compiled shapes stay few. Each image's vector does not depend on the batch around it.
        Thread-safe; up to `concurrent_calls` calls run in parallel, more wait for a free one.
        """
        size = self.spec.batch_size
        n = len(pixels)
        out = np.empty((n, self.dimension), dtype=np.float32)
        for start in range(0, n, size):
            chunk = pixels[start : start + size]
            m = len(chunk)
            shape, run = self._runner(bucket_for(m, size))
            if m < shape:  # fixed shapes: a short batch is padded to its bucket
                padded = np.zeros((shape, *chunk.shape[1:]), dtype=np.uint8)
                padded[:m] = chunk
                chunk = padded
            out[start : start + m] = run(np.ascontiguousarray(chunk, dtype=np.uint8))[:m]
        return out


def load_text_embedder(spec: TextModelSpec) -> TextEmbedder:
    """Load the text encoder a spec names and check, before anything runs, that it takes a batch of
    strings and gives one float vector per string.

    - a `train-text` model (`.keras` with the pooled `text_embedding` layer) and no `layer`: that layer;
    - another `.keras`/`.h5` model: the output of the layer `spec.layer` names;
    - a SavedModel directory (holding saved_model.pb, local or gs://): its serving signature, the output
      `spec.layer` names, default the only (else the first by name) float output of rank 2.

    The identity (`model_sha256`) is the sha256 of the model's file(s), with the layer folded in when
    one is named (another layer of the same file is another model to an incremental run).
    """
    path = spec.path
    if path.endswith((".keras", ".h5")):
        return _load_keras_text_model(spec)
    if _is_saved_model_dir(path):
        return _load_saved_model_text_encoder(spec)
    raise ModelConfigError(
        "path",
        path,
        "expected a Keras model file ending in .keras (or .h5), or a SavedModel directory (holding saved_model.pb)",
        "text",
    )


def _text_identity(files_sha256: str, spec: TextModelSpec) -> str:
    return files_sha256 if not spec.layer else hashlib.sha256(f"{files_sha256}+layer={spec.layer}".encode()).hexdigest()


def _is_float(dtype) -> bool:
    return "float" in str(getattr(dtype, "name", dtype))


def _load_keras_text_model(spec: TextModelSpec) -> TextEmbedder:
    import keras
    import tensorflow as tf

    model = _load_keras_file(spec.path, "text", spec.unsafe_loading)
    names = [layer.name for layer in model.layers]
    if not model.inputs or len(model.inputs) != 1 or "string" not in str(model.inputs[0].dtype):
        raise ModelConfigError(
            "path",
            spec.path,
            f"takes {_describe_inputs(model.inputs)}, not a batch of strings; is it an image model?",
            "text",
        )
    input_shape = tuple(model.inputs[0].shape)
    if len(input_shape) not in (1, 2) or (len(input_shape) == 2 and input_shape[1] not in (1, None)):
        raise ModelConfigError("path", spec.path, f"takes strings of shape {input_shape}, not (batch,) or (batch, 1)", "text")
    if spec.layer:
        if spec.layer not in names:
            raise ModelConfigError(
                "layer", spec.layer, f"no such layer in {spec.path}; layers are: {', '.join(names)[:400]}", "text"
            )
        layer = model.get_layer(spec.layer)
        field, value = "layer", spec.layer
    elif TEXT_EMBEDDING_LAYER in names:
        layer = model.get_layer(TEXT_EMBEDDING_LAYER)
        field, value = "path", spec.path
    else:
        raise ModelConfigError(
            "path",
            spec.path,
            f"has no layer named {TEXT_EMBEDDING_LAYER!r}; is it a text model made by `train-text`? "
            f"Otherwise name the layer whose output is the embedding with {{layer}} (layers: {', '.join(sorted(names))[:200]})",
            "text",
        )
    output = layer.output
    if isinstance(output, (list, tuple)) or len(output.shape) != 2 or not _is_float(output.dtype):
        shape = [tuple(o.shape) for o in output] if isinstance(output, (list, tuple)) else tuple(output.shape)
        dtype = "several outputs" if isinstance(output, (list, tuple)) else str(output.dtype)
        raise ModelConfigError(
            field,
            value,
            f"layer {layer.name!r} outputs {dtype} of shape {shape}; expected one float vector per text (batch, dim)",
            "text",
        )
    embedding_model = keras.Model(model.inputs, output, name="text_embedder")
    # The batch dimension is left open: one trace serves every batch size, so a short batch is
    # never padded (a batch of 100 under --text-batch-size 65536 holds 100 strings, not 65,536).
    signature = [tf.TensorSpec([None] + ([1] if len(input_shape) == 2 else []), tf.string)]
    forward = tf.function(lambda x: embedding_model(x, training=False), input_signature=signature)
    vectorize = text_model_layer(model, TEXT_VECTORIZE_LAYER)
    name = os.path.basename(spec.path) + (f"#{spec.layer}" if spec.layer else "")
    return TextEmbedder(
        spec,
        forward,
        len(input_shape),
        int(output.shape[-1]),
        name,
        _text_identity(fileio.sha256_of_file(spec.path), spec),
        full_model=model,
        sequence_length=getattr(vectorize, "_output_sequence_length", None) if vectorize else None,
    )


def _describe_inputs(inputs) -> str:
    if not inputs:
        return "no input"
    return " and ".join(f"{getattr(t.dtype, 'name', t.dtype)} of shape {tuple(t.shape)}" for t in inputs)


def _is_saved_model_dir(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(fileio.join(path.rstrip("/"), "saved_model.pb"))
    except Exception:  # noqa: BLE001 - an unreadable path is reported by the caller as not a model
        return False


def _local_model_dir(path: str) -> str:
    """A local directory holding the SavedModel at `path`: itself if local, else a copy made through
    Beam's FileSystems (TensorFlow's gs:// reader ignores the storage emulator and needs credentials of its own)."""
    import tempfile

    from apache_beam.io.filesystems import FileSystems

    if not fileio.is_remote(path):
        return path
    root = path.rstrip("/") + "/"
    target = tempfile.mkdtemp(prefix="embeddings-savedmodel-")
    for metadata in FileSystems.match([root + "**"])[0].metadata_list:
        relative = metadata.path[len(root) :]
        if not relative or relative.endswith("/"):
            continue
        local = os.path.join(target, *relative.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fileio.local_copy(metadata.path, os.path.dirname(local))
    return target


def _sha256_of_dir(local: str) -> str:
    """sha256 over every file of a directory: its path relative to the directory and its bytes' sha256, in path order."""
    digest = hashlib.sha256()
    files = sorted(
        os.path.relpath(os.path.join(folder, name), local).replace(os.sep, "/")
        for folder, _, names in os.walk(local)
        for name in names
    )
    for relative in files:
        digest.update(f"{relative}\0{fileio.sha256_of_file(os.path.join(local, relative))}\n".encode())
    return digest.hexdigest()


def _load_saved_model_text_encoder(spec: TextModelSpec) -> TextEmbedder:
    import tensorflow as tf

    path = spec.path
    try:
        local = _local_model_dir(path)
        loaded = tf.saved_model.load(local)
    except Exception as exc:  # noqa: BLE001 - a corrupt or partial copy, an op TensorFlow lacks
        raise ModelConfigError(
            "path", path, f"not a loadable SavedModel ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", "text"
        ) from exc
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise ModelConfigError(
            "path",
            path,
            "has no serving signature; save it with tf.saved_model.save(obj, DIR, signatures=a tf.function taking tf.string [None])",
            "text",
        )
    if "serving_default" in signatures:
        function = signatures["serving_default"]
    elif len(signatures) == 1:
        function = next(iter(signatures.values()))
    else:
        raise ModelConfigError(
            "path", path, f"has several signatures ({', '.join(sorted(signatures))}) and none is serving_default", "text"
        )
    inputs = function.structured_input_signature[1]
    if len(inputs) != 1:
        raise ModelConfigError(
            "path",
            path,
            f"its serving signature takes {len(inputs)} inputs ({', '.join(sorted(inputs))}), not one batch of strings",
            "text",
        )
    input_name, input_spec = next(iter(inputs.items()))
    shape = tuple(input_spec.shape.as_list()) if input_spec.shape.rank is not None else None
    if input_spec.dtype != tf.string:
        raise ModelConfigError(
            "path",
            path,
            f"takes {input_spec.dtype.name} input {input_name!r}, not a batch of strings; is it an image model?",
            "text",
        )
    if shape is None or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] not in (1, None)):
        raise ModelConfigError("path", path, f"takes strings of shape {shape}, not (batch,) or (batch, 1)", "text")
    outputs = function.structured_outputs
    if not isinstance(outputs, dict):
        outputs = {"output_0": outputs}
    usable = sorted(key for key, tensor in outputs.items() if tensor.shape.rank == 2 and _is_float(tensor.dtype))
    described = ", ".join(
        f"{key} ({tensor.dtype.name} {tuple(tensor.shape.as_list()) if tensor.shape.rank is not None else '?'})"
        for key, tensor in sorted(outputs.items())
    )
    if spec.layer:
        if spec.layer not in outputs:
            raise ModelConfigError(
                "layer", spec.layer, f"no such output of {path}'s serving signature; outputs are: {described}", "text"
            )
        if spec.layer not in usable:
            raise ModelConfigError(
                "layer", spec.layer, f"output is {described}; expected one float vector per text (batch, dim)", "text"
            )
        key = spec.layer
    elif usable:
        key = usable[0]
        if len(usable) > 1:
            _LOGGER.warning("%s: embedding with output %r of %s (the layer setting names another)", path, key, described)
    else:
        raise ModelConfigError(
            "path", path, f"has no output of one float vector per text (batch, dim): {described}; name one with {{layer}}", "text"
        )
    rank = len(shape)

    def forward(texts):
        return function(**{input_name: texts})[key]

    dimension = outputs[key].shape[-1]
    if dimension is None:  # not known from the signature: ask the model once
        probe = np.array([""], dtype=object).reshape((1,) if rank == 1 else (1, 1))
        dimension = int(forward(tf.constant(probe, dtype=tf.string)).shape[-1])
    name = os.path.basename(path.rstrip("/")) + (f"#{spec.layer}" if spec.layer else "")
    return TextEmbedder(spec, forward, rank, int(dimension), name, _text_identity(_sha256_of_dir(local), spec))


_BUILD_LOCK = threading.Lock()


def build_base_network(
    name: str,
    weights: Optional[str] = "imagenet",
    alpha: Optional[float] = None,
    image_size: Optional[int] = None,
    seed: int = 0,
):
    """The headless, average-pooled Keras Applications network `name`: what the job embeds with
    and what `train-image` trains on.

    `weights`: "imagenet" (Keras' own download, cached), a no-top weights file (local or gs://), or
    None for random weights. The global Keras seed is set to `seed` just before building (under a
    lock: seeding is process-global), so random weights are the same in every process. Raises
    ModelConfigError naming the `ImageModelSpec` field at fault: weights, alpha, image_size or model
    (the callers map fields to their own flags: the job's --image-model, the trainer's --base).
    """
    import keras

    if name not in NETWORKS:
        raise ModelConfigError("model", name, f"unknown network; one of {', '.join(NETWORKS)}")
    network = NETWORKS[name]
    size = image_size or network.default_size
    if network.fixed_size and size != network.default_size:
        raise ModelConfigError("image_size", size, f"{network.name} only takes {network.default_size}")
    kwargs = dict(input_shape=(size, size, 3), include_top=False, pooling="avg")
    if alpha is not None:
        if not network.has_alpha:
            raise ModelConfigError("alpha", alpha, f"{network.name} has no alpha (width multiplier)")
        kwargs["alpha"] = alpha
    if weights in ("imagenet", None):
        kwargs["weights"] = weights  # imagenet: Keras downloads and caches the file on a machine with internet
    else:
        try:
            local = fileio.local_copy(weights)
        except Exception as exc:
            raise ModelConfigError("weights", weights, f"cannot read the weights file ({exc})") from exc
        if not os.path.exists(local):
            raise ModelConfigError("weights", weights, "no such file")
        kwargs["weights"] = local
    with _BUILD_LOCK:  # seeding is process-global: build one network at a time
        keras.utils.set_random_seed(seed)
        try:
            return network.builder()(**kwargs)
        except ValueError as exc:
            if weights not in ("imagenet", None) and "shape" in str(exc).lower():  # issue 12: blame the weights/alpha/size
                raise ModelConfigError(
                    "weights",
                    weights,
                    (
                        f"does not fit {network.name} at {{alpha}} {alpha} and {{image_size}} {size} "
                        f"({str(exc).splitlines()[0][:160]}); use the weights made for that alpha and size, or change "
                        "{alpha}/{image_size} to match the file"
                    ),
                ) from exc
            field = "weights" if "weights" in str(exc).lower() else "model"
            value = ("none" if weights is None else weights) if field == "weights" else name
            raise ModelConfigError(field, value, str(exc).splitlines()[0]) from exc
        except Exception as exc:
            if weights == "imagenet":
                raise ModelConfigError(
                    "weights",
                    "imagenet",
                    f"could not download ImageNet weights ({type(exc).__name__}); without internet access, "
                    "pass a local or gs:// weights file instead",
                ) from exc
            raise


def _build_network(spec: ImageModelSpec):
    """(model, preprocess_input, name, sha256) of a named network as the job runs it."""
    network = NETWORKS[spec.model]
    weights = None if spec.weights == "none" else spec.weights
    model = build_base_network(spec.model, weights, spec.alpha, spec.image_size, spec.seed)
    is_file = weights not in ("imagenet", None)
    sha = fileio.sha256_of_file(weights) if is_file else _weights_fingerprint(model)
    size = spec.image_size or network.default_size
    params = [f"size={size}"] + ([f"alpha={spec.alpha}"] if spec.alpha is not None else [])
    params.append(f"weights={os.path.basename(weights) if is_file else spec.weights}")
    name = f"keras.applications.{network.name}({', '.join(params)})"
    return model, network.preprocess(), name, sha


def _default_embedding_layer(model):
    """The layer feeding the final classification layer of a user's classifier."""
    last = model.layers[-1]
    inbound = last.input
    if isinstance(inbound, (list, tuple)):
        raise ModelConfigError("layer", None, "the final layer has several inputs; name the layer to use")
    for layer in model.layers[::-1][1:]:
        if layer.output is inbound:
            return layer
    return model.layers[-2]


def _build_user_model(spec: ImageModelSpec):
    import keras

    model = _load_keras_file(spec.model, "image", spec.unsafe_loading)
    if not model.inputs or "string" in str(model.inputs[0].dtype) or len(model.inputs[0].shape) != 4:
        raise ModelConfigError(
            "model",
            spec.model,
            f"takes input of shape {tuple(model.inputs[0].shape) if model.inputs else '?'}, not images "
            "(batch, height, width, 3); is it a text model?",
        )
    if spec.layer:
        try:
            layer = model.get_layer(spec.layer)
        except ValueError:
            names = [layer.name for layer in model.layers]
            raise ModelConfigError(
                "layer", spec.layer, f"no such layer in {spec.model}; layers are: {', '.join(names)[:400]}"
            ) from None
    else:
        layer = _default_embedding_layer(model)
    headless = keras.Model(model.inputs, layer.output, name="headless")
    preprocess = None
    if spec.preprocess:
        if spec.preprocess not in NETWORKS:
            raise ModelConfigError("preprocess", spec.preprocess, f"unknown network; one of {', '.join(NETWORKS)}")
        preprocess = NETWORKS[spec.preprocess].preprocess()
    name = f"{os.path.basename(spec.model)}#{layer.name}"
    return headless, preprocess, name, fileio.sha256_of_file(spec.model)


_HANDOFF: dict[str, ImageEmbedder] = {}  # at most one: the launcher's embedder, for this process's first worker
_HANDOFF_LOCK = threading.Lock()


def pinned_spec(embedder: ImageEmbedder) -> ImageModelSpec:
    """The embedder's spec with `auto` resolved: what workers must run so the manifest stays true."""
    return dataclasses.replace(embedder.spec, backend=embedder.backend, precision=embedder.precision)


def load_image_embedder(spec: ImageModelSpec, hand_off: bool = False) -> ImageEmbedder:
    """Build or load the headless image network a spec describes.

    `hand_off=True` (the launcher) keeps the embedder for the first load of its pinned spec in this
    process, so a local run converts the network once, not once in the launcher and again in the
    worker. Only one embedder is kept, and the first worker load takes it.
    """
    if not hand_off:
        with _HANDOFF_LOCK:
            kept = _HANDOFF.pop(spec.cache_key(), None)
        if kept is not None:
            return kept
    embedder = _load_image_embedder(spec)
    if hand_off:
        with _HANDOFF_LOCK:
            _HANDOFF.clear()
            _HANDOFF[pinned_spec(embedder).cache_key()] = embedder
    return embedder


def _load_image_embedder(spec: ImageModelSpec) -> ImageEmbedder:
    if spec.is_network:
        model, preprocess, name, sha = _build_network(spec)
    elif spec.model.endswith((".keras", ".h5")) or "/" in spec.model:
        if spec.weights not in ("imagenet", "none") and spec.weights:
            raise ModelConfigError("weights", spec.weights, "only applies to a named network, not a .keras file")
        model, preprocess, name, sha = _build_user_model(spec)
    else:
        raise ModelConfigError("model", spec.model, f"unknown network; expected a .keras file or one of: {', '.join(NETWORKS)}")
    return ImageEmbedder(spec, model, preprocess, name, sha)
