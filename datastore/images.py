"""Dataset images decoded by content (the Wav2Pix ``.png`` files are really JPEG)."""

from __future__ import annotations

import cv2
import numpy as np


def decode_image(data: bytes, size: int, where: str) -> np.ndarray:
    """Decode image bytes by content (any format OpenCV reads) to RGB uint8 [size, size, 3].

    Non-square images are centre-cropped to a square first; resizing uses area interpolation.

    Raises:
        ValueError: empty or undecodable data (message names ``where``).
    """
    if not data:
        raise ValueError(f"{where}: empty image file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{where}: cannot decode image data")
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_CUBIC)
    return np.ascontiguousarray(img[:, :, ::-1])
