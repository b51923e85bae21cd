"""Train/serve parity for face models: a prepared crop trains on exactly the tensor the handler scores for that face."""

import cv2
import pytest
import torch

from handler.faces import FaceConfig
from handler.forensics import PreprocessConfig, decode_rgb
from handler.scoring import REGION_FACES, regions_to_score
from tests.shared_faces import face_crop, face_photo
from training.dataset import FaceImageDataset, Sample

PHOTOS = ("london/L003_neutral.jpg", "amfd/A1002_smiling.jpg")


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("faces", [FaceConfig(), FaceConfig(margin=0.5, cascade="frontalface_alt2")])
def test_a_prepared_crop_and_the_served_photo_give_the_same_face_tensor(photo, faces, tmp_path):
    preprocess = PreprocessConfig(input_size=(96, 96))
    crop_file = tmp_path / "crop.png"  # lossless, as training.prepare writes crops
    cv2.imwrite(str(crop_file), cv2.cvtColor(face_crop(photo, faces), cv2.COLOR_RGB2BGR))
    trained_on = FaceImageDataset([Sample(crop_file, 0)], preprocess)[0][0]
    served = regions_to_score(decode_rgb(face_photo(photo).read_bytes()), preprocess, faces)
    assert served.scored == REGION_FACES and len(served.inputs) == 1
    assert torch.equal(served.inputs[0], trained_on)
