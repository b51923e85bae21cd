"""Everything that runs inside a TorchServe worker. Imports only torch, numpy, OpenCV, Pillow (and `ts`)."""
