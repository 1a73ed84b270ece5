"""Dataset images decoded by content (the Wav2Pix ``.png`` files are really JPEG), and the colour channel order
a dataset folder stores them in.

Channel order is a property of a data source: the published Wav2Pix crops (Duarte et al. 2019) are stored with
red and blue swapped (decoded as RGB, skin has more blue than red; ``../shared/data/README.md``), capture
datasets (:mod:`datastore.capture_format`) hold ordinary RGB images, and any folder may declare its order in a
small JSON file at its top (:data:`DECLARATION_FILE`, ``{"channel_order": "rgb"}``). :func:`decode_image`
undoes a swap, so every image leaves this module in true RGB order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from datastore import capture_format

ChannelOrder = Literal["rgb", "bgr"]
CHANNEL_ORDERS: tuple[str, ...] = ("rgb", "bgr")
"""How a folder's image files store colour: ``"rgb"`` (ordinary images) or ``"bgr"`` (red and blue swapped)."""
DECLARATION_FILE = "avgan-data.json"
"""Optional file at the top of a dataset folder: ``{"channel_order": "rgb" | "bgr"}``."""
WAV2PIX_CHANNEL_ORDER: ChannelOrder = "bgr"
"""Channel order of a folder in the Wav2Pix layout that declares none: the published crops' (red and blue swapped)."""


def decode_image(data: bytes, size: int, where: str, channel_order: ChannelOrder = "rgb") -> np.ndarray:
    """Decode image bytes by content (any format OpenCV reads) to RGB uint8 [size, size, 3].

    Non-square images are centre-cropped to a square first; resizing uses area interpolation (cubic when
    enlarging).

    Args:
        data: the file's bytes. size: output side, px. where: the file, for messages.
        channel_order: how the file stores colour (:data:`CHANNEL_ORDERS`); ``"bgr"`` (red and blue swapped in
            the file) is swapped back, so the result is true RGB either way.

    Raises:
        ValueError: empty or undecodable data, or an unknown ``channel_order`` (message names ``where``).
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"{where}: channel order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
    if not data:
        raise ValueError(f"{where}: empty image file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV's order: B, G, R
    if img is None:
        raise ValueError(f"{where}: cannot decode image data")
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_CUBIC)
    # OpenCV decodes to B, G, R: reversed, an ordinary file is RGB; a file with red and blue swapped already is
    return np.ascontiguousarray(img if channel_order == "bgr" else img[:, :, ::-1])


def declared_channel_order(root: str | Path) -> ChannelOrder | None:
    """The channel order ``root/avgan-data.json`` declares, or ``None`` without that file.

    Raises:
        ValueError: an unreadable file, not a JSON object, an unknown key or an unknown order (names the file).
    """
    path = Path(root) / DECLARATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a JSON object such as {{"channel_order": "rgb"}}')
    unknown = sorted(set(data) - {"channel_order"})
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (allowed: channel_order)")
    order = data.get("channel_order")
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"{path}: key 'channel_order': expected one of {', '.join(CHANNEL_ORDERS)}, got {order!r}")
    return order


def channel_order(root: str | Path) -> ChannelOrder:
    """How the image files of the dataset folder ``root`` store colour: its declaration
    (:func:`declared_channel_order`) if it has one, else ``"rgb"`` for a capture dataset and
    :data:`WAV2PIX_CHANNEL_ORDER` (``"bgr"``) for the Wav2Pix layout.

    Raises:
        ValueError: a bad declaration file (names it).
    """
    declared = declared_channel_order(root)
    if declared is not None:
        return declared
    return "rgb" if capture_format.is_capture_dataset(Path(root)) else WAV2PIX_CHANNEL_ORDER
