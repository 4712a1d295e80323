"""Find ShapesWorld objects in an image: colour, shape, size and position.

Exact on rendered images and tolerant of the blur and noise of generated ones:

1. every pixel with enough chroma (max - min channel) is foreground and gets
   the colour whose hue direction is nearest (cosine in an opponent-colour
   plane, so blur towards the grey background keeps the hue);
2. connected components (8-connected) per colour; tiny ones are dropped;
3. per component, the pixels above half its peak chroma give the bounding box
   (hence centre and size), and a soft mask is matched against each shape
   drawn by the renderer into that box (soft IoU); the best match wins.

Numpy and PIL only; ``scipy.ndimage.label`` is used when installed, else a
small breadth-first search labels the components (same result).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from . import grammar as G
from .render import SUPERSAMPLE, draw_shape

#: A pixel is foreground when max - min channel reaches this (0..255 scale).
CHROMA_MIN = 48.0
#: Components smaller than this fraction of a small object's bounding square are noise.
MIN_AREA_FRACTION = 0.2
#: Objects whose longer side exceeds this fraction of the image are "large".
LARGE_THRESHOLD = (G.SIZE_FRACTION["small"] + G.SIZE_FRACTION["large"]) / 2


@dataclass(frozen=True)
class DetectedObject:
    """One detected object.

    ``x``/``y``: centre in unit coordinates (y downwards), comparable with
    ``grammar.SceneObject``; ``bbox``: (x0, y0, x1, y1) pixels, x1/y1
    exclusive; ``confidence`` in [0, 1] (colour agreement x shape match);
    ``shape_scores``: soft IoU per shape.
    """

    colour: str
    shape: str
    size: str
    x: float
    y: float
    bbox: tuple[int, int, int, int]
    confidence: float
    area: int
    shape_scores: tuple[tuple[str, float], ...] = ()

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x, self.y)


def _opponent(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) -> hue plane (..., 2): red-vs-cyan and green-vs-blue axes."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([r - (g + b) / 2, (np.sqrt(3) / 2) * (g - b)], axis=-1)


_NAMES = tuple(G.COLOURS)
_PROTOS = _opponent(np.array([G.COLOURS[c] for c in _NAMES], dtype=np.float32))
_PROTOS /= np.linalg.norm(_PROTOS, axis=1, keepdims=True)
_PALETTE_CHROMA = np.array([max(G.COLOURS[c]) - min(G.COLOURS[c]) for c in _NAMES], dtype=np.float32)


def _to_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 image array, got shape {arr.shape}")
        arr = arr[..., :3].astype(np.float32)
        if image.dtype.kind == "f" and arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0  # floats in [0, 1]
        return arr
    raise TypeError(f"expected a PIL.Image or an HxWx3 numpy array, got {type(image).__name__}")


def _label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (0 = background) and their number."""
    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    if ndimage is not None:
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        return labels, int(n)
    return _label_components_bfs(mask)


def _label_components_bfs(mask: np.ndarray) -> tuple[np.ndarray, int]:
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0] = n
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                        labels[yy, xx] = n
                        queue.append((yy, xx))
    return labels, n


#: Area of each shape as a fraction of its bounding square.
FILL = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5, "diamond": 0.5}
#: Centroid minus box centre along y, as a fraction of the side (triangles point up).
CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6, "diamond": 0.0}


def _template(shape: str, cx: float, cy: float, side: float, frame: tuple[int, int, int, int]) -> np.ndarray:
    """Coverage of ``shape`` drawn like the renderer (box centre cx, cy; side in px) over ``frame``.

    ``frame`` = (x0, y0, x1, y1) pixel window; returns an array of its shape, values in [0, 1].
    """
    k = SUPERSAMPLE
    fx0, fy0, fx1, fy1 = frame
    img = Image.new("L", ((fx1 - fx0) * k, (fy1 - fy0) * k), 0)
    half = side / 2
    box = ((cx - half - fx0) * k, (cy - half - fy0) * k, (cx + half - fx0) * k - 1, (cy + half - fy0) * k - 1)
    draw_shape(ImageDraw.Draw(img), shape, box, 255)
    return np.asarray(img.resize((fx1 - fx0, fy1 - fy0), Image.BOX), dtype=np.float32) / 255.0


#: Template blurs (Gaussian sigma, pixels) tried when matching shapes, so a
#: blurry generated object still matches its shape better than the others.
TEMPLATE_BLURS = (0.0, 0.7, 1.4)


def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with zero padding (mass near the frame edge may leave)."""
    if sigma <= 0:
        return a
    r = max(1, int(np.ceil(3 * sigma)))
    kern = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kern /= kern.sum()
    return _conv_matrix(a.shape[0], kern) @ a @ _conv_matrix(a.shape[1], kern).T


def _conv_matrix(n: int, kern: np.ndarray) -> np.ndarray:
    """(n, n) matrix applying the centred 1-D kernel ``kern`` with zero padding."""
    r = len(kern) // 2
    m = np.zeros((n, n + 2 * r), dtype=np.float32)
    for i in range(n):
        m[i, i:i + len(kern)] = kern
    return m[:, r:n + r]


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
    return out


def detect(image) -> list[DetectedObject]:
    """Detect the objects in ``image`` (PIL image or HxWx3 array), sorted left to right.

    >>> from .render import render
    >>> [d.shape for d in detect(render(G.Scene((G.SceneObject("red", "circle", "large", .5, .5),)), 32))]
    ['circle']
    """
    # 1. per-pixel chroma (above the background's noise floor) and nearest colour by hue
    arr = _to_array(image)
    h, w = arr.shape[:2]
    chroma = arr.max(axis=2) - arr.min(axis=2)
    floor = float(np.median(chroma))
    opp = _opponent(arr)
    norm = np.linalg.norm(opp, axis=2, keepdims=True)
    cos = (opp / np.maximum(norm, 1e-6)) @ _PROTOS.T          # (h, w, n_colours)
    label = cos.argmax(axis=2)
    fg = chroma >= max(CHROMA_MIN, floor + CHROMA_MIN / 2)
    min_area = max(3, int(MIN_AREA_FRACTION * (G.SIZE_FRACTION["small"] * min(h, w)) ** 2))
    ys_grid, xs_grid = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5   # pixel centres
    found: list[DetectedObject] = []
    for ci, colour in enumerate(_NAMES):
        # 2. connected components of this colour
        comps, n = _label_components(fg & (label == ci))
        for k in range(1, n + 1):
            comp = comps == k
            area = int(comp.sum())
            if area < min_area:
                continue
            # 3. soft coverage: chroma relative to the object's peak, over the
            #    component and its faint anti-aliased rim (not other objects)
            peak = max(float(np.percentile(chroma[comp], 95)), 0.8 * _PALETTE_CHROMA[ci])
            rim = _dilate(comp) & ~(fg & ~comp) & ((label == ci) | ~fg)
            soft = np.where(rim, np.clip((chroma - floor) / max(peak - floor, 1.0), 0, 1), 0.0)
            mass = float(soft.sum())
            if mass < min_area / 2:
                continue
            cx = float((soft * xs_grid).sum() / mass)
            cy = float((soft * ys_grid).sum() / mass)
            ys, xs = np.nonzero(rim)
            frame = (max(int(xs.min()) - 1, 0), max(int(ys.min()) - 1, 0),
                     min(int(xs.max()) + 2, w), min(int(ys.max()) + 2, h))
            patch = soft[frame[1]:frame[3], frame[0]:frame[2]]
            # 4. shape: each shape of the same area and centroid, drawn like the
            #    renderer, compared with the coverage by soft IoU
            scores, boxes = [], {}
            for shape in G.SHAPES:
                side = float(np.sqrt(mass / FILL[shape]))
                bcy = cy - CENTROID_DY[shape] * side
                t = _template(shape, cx, bcy, side, frame)
                iou = 0.0
                for sigma in TEMPLATE_BLURS:
                    tb = _gaussian_blur(t, sigma)
                    iou = max(iou, float(np.minimum(patch, tb).sum() / max(np.maximum(patch, tb).sum(), 1e-6)))
                scores.append((shape, round(iou, 4)))
                boxes[shape] = (cx, bcy, side)
            best_shape, best = max(scores, key=lambda s: s[1])
            bx, by, side = boxes[best_shape]
            # 5. size, centre, confidence
            core = comp & (chroma >= 0.5 * peak)
            colour_conf = float(np.clip(cos[..., ci][core].mean(), 0, 1)) if core.any() else 0.0
            size = "large" if side / min(h, w) > LARGE_THRESHOLD else "small"
            bbox = (int(np.floor(bx - side / 2)), int(np.floor(by - side / 2)),
                    int(np.ceil(bx + side / 2)), int(np.ceil(by + side / 2)))
            found.append(DetectedObject(
                colour=colour, shape=best_shape, size=size, x=bx / w, y=by / h, bbox=bbox,
                confidence=round(colour_conf * best, 4), area=area, shape_scores=tuple(scores)))
    found.sort(key=lambda d: (d.x, d.y))
    return found


def scene_matches(detections: list[DetectedObject], scene: G.Scene, *, tol: float = 0.08) -> bool:
    """Whether ``detections`` equal ``scene``: same multiset of (colour, shape, size), centres within ``tol``."""
    if len(detections) != len(scene.objects):
        return False
    remaining = list(detections)
    for o in scene.objects:
        hit = next((d for d in remaining if (d.colour, d.shape, d.size) == (o.colour, o.shape, o.size)
                    and abs(d.x - o.x) <= tol and abs(d.y - o.y) <= tol), None)
        if hit is None:
            return False
        remaining.remove(hit)
    return True
