"""A detected face's box, shared by every face detector (handler.faces, handler.mtcnn).

It lives apart from handler.faces so that a detector module can return boxes without importing the module that
dispatches to it (handler.faces imports the detectors; they must not import it back). handler.faces re-exports
FaceBox, so `from handler.faces import FaceBox` keeps working everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FaceBox:
    """A face in image pixel coordinates: top-left corner, width and height (what the cascade reports)."""

    x: int
    y: int
    width: int
    height: int

    @property
    def area(self) -> int:
        """Pixels inside the box."""
        return self.width * self.height

    def to_list(self) -> list[int]:
        """[x, y, width, height], the form responses and manifests carry."""
        return [self.x, self.y, self.width, self.height]
