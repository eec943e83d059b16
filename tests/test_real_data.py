"""The job on real public data from ../shared/data: proves preprocessing matches real weights."""

import numpy as np
import pytest

from pipeline.run import run
from transforms.write import read_embeddings


def precision_at_k(vectors: np.ndarray, labels: list, k: int = 10) -> float:
    """Leave-one-out cosine kNN: mean fraction of the k nearest neighbours sharing the label."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    labels = np.asarray(labels)
    return float((labels[nearest] == labels[:, None]).mean())


@pytest.mark.slow
@pytest.mark.shared_data
def test_imagenette_with_shared_mobilenet_weights_retrieves_by_class(shared_data, tmp_path):
    manifest = shared_data / "images" / "imagenette-sample" / "MANIFEST.csv"
    weights = shared_data / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
    if not manifest.exists() or not weights.exists():
        pytest.skip("imagenette sample or MobileNet weights missing from ../shared/data")
    result = run([
        "--output", str(tmp_path / "out"),
        "--image-input", str(manifest),
        "--image-uri-field", "path",
        "--image-model", "MobileNet",
        "--image-alpha", "0.25",
        "--image-weights", str(weights),
        "--passthrough", "label",
    ])
    assert result["counts"]["image"] == {"read": 300, "embedded": 300, "failed": 0, "skipped": 0, "balanced": True}
    table = read_embeddings(str(tmp_path / "out"), "image")
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    assert vectors.shape == (300, 256)
    p10 = precision_at_k(vectors, table.column("label").to_pylist())
    print(f"imagenette precision@10 = {p10:.3f}")
    assert p10 >= 0.70  # random weights give about 0.10
