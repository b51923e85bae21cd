"""The naive alternative the serving benchmark compares against: a small Flask app, one forward pass per request.

This is the shape the reference deepfake-detection services ship: load the TorchScript file once,
then for every request decode, preprocess and run the model on a batch of one inside Flask's
threaded development server, with torch's default threads. It does the same per-image work as the
handler (the project's own decoding, preprocessing and calibration), so the comparison measures the
serving architecture, not a different pipeline. `--optimization` lets it use the handler's
model preparation too, to separate what batching and workers bring from what the graph
optimisation brings.

    python -m benchmarks.naive_server --export-dir build/demo/run/export --port 5000
    curl -X POST http://127.0.0.1:5000/predict -T face.jpg
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from flask import Flask, Response, jsonify, request

from handler.forensics import ImageDecodeError
from handler.scoring import ExportedDetector, decode_for_scoring, most_fake, regions_to_score
from handler.torchscript import OPTIMIZATIONS, ServingOptions

NAIVE_OPTIMIZATION = "none"  # what the reference services do: torch.jit.load, eval, call


def create_app(export_dir: Path, optimization: str = NAIVE_OPTIMIZATION, device: str = "cpu") -> Flask:
    """A Flask app with POST /predict (raw image body → JSON verdict) and GET /ping, the model already loaded."""
    detector = ExportedDetector.load(export_dir, device, ServingOptions(optimization=optimization))
    preprocessing, faces = detector.metadata.preprocessing, detector.metadata.faces
    threshold = detector.metadata.threshold
    app = Flask(__name__)

    @app.get("/ping")
    def ping() -> Response:
        return jsonify(status="Healthy")

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        try:
            regions = regions_to_score(decode_for_scoring(request.get_data(), preprocessing, faces), preprocessing,
                                       faces)
        except ImageDecodeError as error:
            return jsonify(error={"code": error.code, "message": str(error)}), 400
        scores = detector.score(detector.serving.batch(list(regions.inputs), detector.device))
        probability = round(scores[most_fake(scores)].calibrated, 6)
        return jsonify(label="fake" if probability >= threshold else "real", probability_fake=probability,
                       timing_ms={"batch_size": 1}), 200

    return app


def main(argv: list[str] | None = None) -> None:
    """Serves until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-dir", type=Path, required=True, help="a training run's export/ folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--optimization", choices=OPTIMIZATIONS, default=NAIVE_OPTIMIZATION)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no log line per request: it would cost CPU
    create_app(args.export_dir, args.optimization, args.device).run(args.host, args.port, threaded=True)


if __name__ == "__main__":
    main()
