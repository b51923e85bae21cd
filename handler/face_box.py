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

    def overlap(self, other: FaceBox) -> float:
        """Intersection over the smaller box: 1 when one box lies inside the other (one face found twice)."""
        left, top = max(self.x, other.x), max(self.y, other.y)
        right = min(self.x + self.width, other.x + other.width)
        bottom = min(self.y + self.height, other.y + other.height)
        intersection = max(0, right - left) * max(0, bottom - top)
        return intersection / max(1, min(self.area, other.area))
