"""How long a load's embedding-space stamping takes with the int8-range cache empty and warm.

    python -m loadtests.stamp_time ViT-B-32 laion2b_s34b_b79k

Loads the open_clip model twice (random weights, CPU) into a fresh cache folder and times
clipfleet.models.embedding_space.stamp each time: the first computes the weights digest and runs the
calibration forwards, the second reads the range from the cache (the digest is still hashed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("pretrained")
    options = parser.parse_args()
    os.environ["CLIPFLEET_CALIBRATION_CACHE"] = tempfile.mkdtemp(prefix="clipfleet-calib-")
    from clipfleet.config import ClipModelSpec
    from clipfleet.models.clip import load_clip_model
    from clipfleet.models.device import choose_device
    from clipfleet.models.embedding_space import stamp

    spec = ClipModelSpec(backend="open_clip", model=options.model, pretrained=options.pretrained)
    for label in ("empty cache", "warm cache"):
        model = load_clip_model(spec, choose_device("cpu"), True)
        started = time.perf_counter()
        stamp(model)
        print(f"{options.model} {label}: stamp {time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
