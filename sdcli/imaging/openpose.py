"""A1111's ControlNet openpose preprocessors (openpose, openpose_hand, openpose_face,
openpose_faceonly, openpose_full): the CMU OpenPose body, hand and face networks, converted to
OpenVINO IR by `sdcli convert` (convert/openpose.py), run here with numpy/OpenCV around them, as
the extension's annotator does (Mikubill/sd-webui-controlnet annotator/openpose, after
Hzzone/pytorch-openpose), re-implemented from its rules:

* body: the BGR image scaled so its height is 0.5 x 368, padded right and down to a multiple of
  8 with grey 128, fed as x / 256 - 0.5; the 19 heatmaps and 38 part-affinity fields scaled x8
  (Lanczos), the padding cut, scaled back to the image (Lanczos up, area down).  Peaks: each of
  the 18 heatmaps blurred (Gaussian sigma 3, reflected border), local maxima over the four
  neighbours above 0.1.  Limbs: each candidate pair's field sampled at 10 points of the segment
  (rounded half to even) and projected on its direction; kept when more than 8 samples exceed
  0.05 and the mean, less a length penalty min(0, H / (2 |AB|) - 1), is positive; greedily by
  that score, each peak used once per limb.  People: limbs joined into rows of 18 parts in the
  extension's order (the two ear-shoulder limbs never start a person), rows with fewer than 4
  parts or a mean score under 0.4 dropped.
* hands: a square box from each arm (shoulder, elbow, wrist): centred 0.33 of the forearm past
  the wrist, 1.5 x max(forearm, 0.9 x upper arm) wide, clipped to the image, kept from 20 pixels;
  the crop blurred (sigma 0.8), run at 184, 368, 552 and 736 pixels square, heatmaps averaged at
  128 x 128; each of the 21 maps blurred (sigma 3), thresholded at 0.05, the connected region
  (8-neighbours) holding the most heat kept, its maximum scaled to the box.
* face: a square box around the nose from the eyes (3x their distance) and ears (1.5x), kept
  from 20 pixels; the crop scaled to 384 x 384; the last stage's 71 heatmaps scaled to the crop
  bilinearly (corners aligned); each map's maximum above 0.05 is a point (all 71 maps, as the
  extension, whose last one is the background's).
* drawing on black at the image's size: limbs as ellipses of half-width 4 in 60 % of their
  colour, joints as discs of radius 4 (18 colours round the hue circle from red); hand bones as
  lines of width 2 in 20 hues, hand joints blue discs of radius 4; face points white discs of
  radius 3.

The detector runs on the image edge-padded to multiples of 64 (the extension's
resize_image_with_pad), its map cropped back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcli.imaging.annotators import find_annotator, infer

BOX = 368
STRIDE = 8
PAD_VALUE = 128
BODY_SCALES = (0.5,)
HAND_SCALES = (0.5, 1.0, 1.5, 2.0)
PEAK_THRESHOLD = 0.1
PAF_THRESHOLD = 0.05
MID_POINTS = 10
HAND_THRESHOLD = 0.05
HAND_MAP = 128
FACE_INPUT = 384
FACE_THRESHOLD = 0.05
BODY_PARTS = 18
# limbs as 1-based part pairs, and the PAF channels (x, y) of each, in the extension's order
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
PAF_CHANNELS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
                (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
DRAWN_LIMBS = 17  # the two ear-shoulder limbs are not drawn
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
STICK = 4
HAND_BONES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
EPS = 0.01

# the networks: annotator folder names and the published files they are converted from
NETWORKS = {"body": ("openpose_body", "body_pose_model.pth"), "hand": ("openpose_hand", "hand_pose_model.pth"),
            "face": ("openpose_face", "facenet.pth")}
# module: (draw body, hands, face)
MODULES = {"openpose": (True, False, False), "openpose_hand": (True, True, False),
           "openpose_face": (True, False, True), "openpose_faceonly": (False, False, True),
           "openpose_full": (True, True, True)}


# --- resizing as the annotator does -------------------------------------------------------------------

def resize_to(x: np.ndarray, height, width) -> np.ndarray:
    """x at int(width) x int(height): area when the sides' sum shrinks, else Lanczos-4; maps of
    other than 1 or 3 channels a channel at a time."""
    import cv2

    k = float(height + width) / float(x.shape[0] + x.shape[1])
    mode = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
    size = (int(width), int(height))
    if x.ndim == 3 and x.shape[2] not in (1, 3):
        return np.stack([cv2.resize(np.ascontiguousarray(x[:, :, i]), size, interpolation=mode)
                         for i in range(x.shape[2])], axis=2)
    return cv2.resize(x, size, interpolation=mode)


def resize_by(x: np.ndarray, factor: float) -> np.ndarray:
    return resize_to(x, x.shape[0] * factor, x.shape[1] * factor)


def pad_right_down(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The image padded at the bottom and right to multiples of STRIDE with PAD_VALUE; (padded,
    rows added, columns added)."""
    h, w = image.shape[:2]
    down, right = -h % STRIDE, -w % STRIDE
    return np.pad(image, [(0, down), (0, right), (0, 0)], constant_values=PAD_VALUE), down, right


def net_input(padded: np.ndarray) -> np.ndarray:
    """uint8 BGR [H, W, 3] to float32 [1, 3, H, W] / 256 - 0.5."""
    return np.ascontiguousarray(padded.astype(np.float32).transpose(2, 0, 1)[None] / 256 - 0.5)


def network_maps(xml: Path, image: np.ndarray, name: str, height: int, width: int) -> np.ndarray:
    """Output `name` of the network on `image` (uint8 BGR), x8, the padding cut, at height x width."""
    padded, down, right = pad_right_down(image)
    out = np.transpose(infer(xml, net_input(padded))[name][0], (1, 2, 0))
    out = resize_by(out, STRIDE)[:padded.shape[0] - down, :padded.shape[1] - right, :]
    return resize_to(out, height, width)


def gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur in float64, radius int(4 sigma + 0.5), reflected border ('dcba|abcd')."""
    import cv2

    radius = int(4.0 * sigma + 0.5)
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_64F)
    return cv2.sepFilter2D(np.asarray(x, np.float64), cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)


# --- body ------------------------------------------------------------------------------------------------

def body_maps(bgr: np.ndarray, xml: Path) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps [H, W, 19], PAFs [H, W, 38]), float64, of the body network on the image."""
    h, w = bgr.shape[:2]
    heat = np.zeros((h, w, 19))
    paf = np.zeros((h, w, 38))
    for scale in BODY_SCALES:
        k = scale * BOX / h
        test = resize_by(bgr, k)
        heat += network_maps(xml, test, "heatmap", h, w) / len(BODY_SCALES)
        paf += network_maps(xml, test, "paf", h, w) / len(BODY_SCALES)
    return heat, paf


def find_peaks(heat: np.ndarray) -> list[list[tuple]]:
    """For each of the 18 parts, its peaks (x, y, score, id), ids counted over all parts."""
    peaks, counter = [], 0
    for part in range(BODY_PARTS):
        raw = heat[:, :, part]
        smooth = gaussian(raw, 3.0)
        above = np.zeros_like(smooth)
        above[1:, :] = smooth[:-1, :]
        below = np.zeros_like(smooth)
        below[:-1, :] = smooth[1:, :]
        left = np.zeros_like(smooth)
        left[:, 1:] = smooth[:, :-1]
        right = np.zeros_like(smooth)
        right[:, :-1] = smooth[:, 1:]
        mask = (smooth >= above) & (smooth >= below) & (smooth >= left) & (smooth >= right) & (smooth > PEAK_THRESHOLD)
        ys, xs = np.nonzero(mask)
        peaks.append([(int(x), int(y), float(raw[y, x]), counter + i) for i, (x, y) in enumerate(zip(xs, ys))])
        counter += len(xs)
    return peaks


def limb_score(paf: np.ndarray, a: tuple, b: tuple, channels: tuple, height: int) -> tuple[float, bool]:
    """(score with the length prior, accepted) of joining peaks a and b along the limb's field."""
    vx, vy = b[0] - a[0], b[1] - a[1]
    norm = max(0.001, math.sqrt(vx * vx + vy * vy))
    ux, uy = vx / norm, vy / norm
    xs = np.rint(np.linspace(a[0], b[0], num=MID_POINTS)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], num=MID_POINTS)).astype(int)
    along = paf[ys, xs, channels[0]] * ux + paf[ys, xs, channels[1]] * uy
    score = sum(along.tolist()) / len(along) + min(0.5 * height / norm - 1, 0)
    return score, int(np.count_nonzero(along > PAF_THRESHOLD)) > 0.8 * len(along) and score > 0


def connect(peaks: list, paf: np.ndarray, height: int) -> list:
    """Each limb's connections, rows [id A, id B, score, index in A's peaks, index in B's]
    (None where a part has no peak)."""
    out = []
    for (part_a, part_b), channels in zip(LIMBS, PAF_CHANNELS):
        cands_a, cands_b = peaks[part_a - 1], peaks[part_b - 1]
        if not cands_a or not cands_b:
            out.append(None)
            continue
        candidates = []
        for i, a in enumerate(cands_a):
            for j, b in enumerate(cands_b):
                score, ok = limb_score(paf, a, b, channels, height)
                if ok:
                    candidates.append((i, j, score))
        candidates = sorted(candidates, key=lambda c: c[2], reverse=True)
        rows, used_a, used_b = [], set(), set()
        for i, j, score in candidates:
            if i not in used_a and j not in used_b:
                rows.append([cands_a[i][3], cands_b[j][3], score, i, j])
                used_a.add(i)
                used_b.add(j)
                if len(rows) >= min(len(cands_a), len(cands_b)):
                    break
        out.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    return out


def assemble(peaks: list, connections: list) -> np.ndarray:
    """People as rows of 20: the candidate id of each of the 18 parts (-1: none), total score,
    part count."""
    candidates = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    people = -1 * np.ones((0, 20))
    for k, rows in enumerate(connections):
        if rows is None:
            continue
        index_a, index_b = LIMBS[k][0] - 1, LIMBS[k][1] - 1
        for row in rows:
            id_a, id_b, score = row[0], row[1], row[2]
            found = [j for j in range(len(people)) if people[j][index_a] == id_a or people[j][index_b] == id_b][:2]
            if len(found) == 1:
                j = found[0]
                if people[j][index_b] != id_b:
                    people[j][index_b] = id_b
                    people[j][-1] += 1
                    people[j][-2] += candidates[int(id_b), 2] + score
            elif len(found) == 2:
                j1, j2 = found
                both = ((people[j1] >= 0).astype(int) + (people[j2] >= 0).astype(int))[:-2]
                if not np.any(both == 2):  # disjoint: merged
                    people[j1][:-2] += people[j2][:-2] + 1
                    people[j1][-2:] += people[j2][-2:]
                    people[j1][-2] += score
                    people = np.delete(people, j2, 0)
                else:
                    people[j1][index_b] = id_b
                    people[j1][-1] += 1
                    people[j1][-2] += candidates[int(id_b), 2] + score
            elif k < 17:
                person = -1 * np.ones(20)
                person[index_a], person[index_b] = id_a, id_b
                person[-1] = 2
                person[-2] = candidates[int(id_a), 2] + candidates[int(id_b), 2] + score
                people = np.vstack([people, person])
    keep = [i for i in range(len(people)) if not (people[i][-1] < 4 or people[i][-2] / people[i][-1] < 0.4)]
    return people[keep]


@dataclass
class Person:
    body: list  # 18 (x, y) in pixels, or None
    left_hand: list | None = None  # 21 (x, y) normalised to the image (-1/W, -1/H: not found)
    right_hand: list | None = None
    face: list | None = None


def people_of(heat: np.ndarray, paf: np.ndarray, height: int) -> list[Person]:
    """The people the body maps show (keypoints in pixels)."""
    peaks = find_peaks(heat)
    candidates = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    people = assemble(peaks, connect(peaks, paf, height))
    return [Person([None if i < 0 else (float(candidates[i, 0]), float(candidates[i, 1]))
                    for i in person[:BODY_PARTS].astype(int)]) for person in people]


# --- hands and face --------------------------------------------------------------------------------------

def hand_boxes(body: list, height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is left) of each hand box the arms give."""
    arms = []
    for shoulder, elbow, wrist, is_left in ((5, 6, 7, True), (2, 3, 4, False)):
        if all(body[i] is not None for i in (shoulder, elbow, wrist)):
            arms.append((*body[shoulder], *body[elbow], *body[wrist], is_left))
    out = []
    for x1, y1, x2, y2, x3, y3, is_left in arms:
        x = x3 + 0.33 * (x3 - x2)
        y = y3 + 0.33 * (y3 - y2)
        forearm = math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
        upper = math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
        side = 1.5 * max(forearm, 0.9 * upper)
        x -= side / 2
        y -= side / 2
        x, y = max(x, 0), max(y, 0)
        side_x = width - x if x + side > width else side
        side_y = height - y if y + side > height else side
        side = min(side_x, side_y)
        if side >= 20:
            out.append((int(x), int(y), int(side), is_left))
    return out


def face_box(body: list, height: int, width: int) -> tuple[int, int, int] | None:
    """(x, y, side) of the face box from the nose, eyes and ears, or None."""
    head = body[0]
    if head is None or all(body[i] is None for i in (14, 15, 16, 17)):
        return None
    side = 0.0
    x0, y0 = head
    for index, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)):
        if body[index] is not None:
            x1, y1 = body[index]
            side = max(side, max(abs(x0 - x1), abs(y0 - y1)) * factor)
    x, y = max(x0 - side, 0), max(y0 - side, 0)
    side_x = width - x if x + side > width else side * 2  # (the extension tests x + side, not x + 2 side)
    side_y = height - y if y + side > height else side * 2
    side = min(side_x, side_y)
    return (int(x), int(y), int(side)) if side >= 20 else None


def hand_maps(crop: np.ndarray, xml: Path) -> np.ndarray:
    """The hand network's 22 heatmaps of a BGR crop, averaged over its four sizes, [128, 128, 22]."""
    import cv2

    image = cv2.GaussianBlur(crop, (0, 0), 0.8)
    heat = np.zeros((HAND_MAP, HAND_MAP, 22))
    for scale in HAND_SCALES:
        size = scale * BOX
        heat += network_maps(xml, resize_to(image, size, size), "heatmap", HAND_MAP, HAND_MAP) / len(HAND_SCALES)
    return heat


def hand_keypoints(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """[21, 2] (x, y) in a height x width crop of the 21 keypoints of hand heatmaps [128, 128, 22]:
    each map blurred (sigma 3) and thresholded, the 8-connected region holding the most (unblurred)
    heat kept, its maximum scaled to the crop; (0, 0) where nothing passes."""
    import cv2

    out = []
    for part in range(21):
        raw = heat[:, :, part]
        binary = np.ascontiguousarray(gaussian(raw, 3.0) > HAND_THRESHOLD, dtype=np.uint8)
        if not binary.any():
            out.append([0, 0])
            continue
        count, labels = cv2.connectedComponents(binary, connectivity=8)
        best = int(np.argmax([np.sum(raw[labels == i]) for i in range(1, count)])) + 1
        kept = np.where(labels == best, raw, 0)
        y, x = np.unravel_index(int(np.argmax(kept)), kept.shape)
        out.append([int(float(x) * float(width) / float(HAND_MAP)), int(float(y) * float(height) / float(HAND_MAP))])
    return np.array(out)


def hand_peaks(crop: np.ndarray, xml: Path) -> np.ndarray:
    """[21, 2] (x, y) in the crop of the hand's keypoints ((0, 0): not found)."""
    return hand_keypoints(hand_maps(crop, xml), crop.shape[0], crop.shape[1])


def bilinear_corners(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, h, w] scaled to [C, height, width] bilinearly with the corners aligned."""
    def axis(n_in, n_out):
        scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
        src = np.arange(n_out, dtype=np.float32) * scale
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        t = (src - i0).astype(np.float32)
        return i0, i1, t

    y0, y1, ty = axis(maps.shape[1], height)
    x0, x1, tx = axis(maps.shape[2], width)
    rows = maps[:, y0, :] * (1 - ty)[None, :, None] + maps[:, y1, :] * ty[None, :, None]
    return rows[:, :, x0] * (1 - tx)[None, None, :] + rows[:, :, x1] * tx[None, None, :]


def face_maps(crop: np.ndarray, xml: Path) -> np.ndarray:
    """The face network's last 71 heatmaps of a BGR crop (run at 384 x 384), scaled to the crop."""
    h, w = crop.shape[:2]
    x = resize_to(crop, FACE_INPUT, FACE_INPUT).astype(np.float32).transpose(2, 0, 1)[None] / np.float32(256.0) - 0.5
    return bilinear_corners(infer(xml, np.ascontiguousarray(x, np.float32))["heatmap"][0], h, w)


def face_keypoints(maps: np.ndarray) -> np.ndarray:
    """[n, 2] (x, y): each map's first maximum where it passes the threshold (maps that never do
    are skipped)."""
    out = []
    for part in range(maps.shape[0]):
        ys, xs = np.nonzero(maps[part] > FACE_THRESHOLD)
        if len(ys):
            best = int(np.argmax(maps[part][ys, xs]))
            out.append([int(xs[best]), int(ys[best])])
    return np.array(out).reshape(-1, 2)


def face_peaks(crop: np.ndarray, xml: Path) -> np.ndarray:
    """[n, 2] (x, y) in the crop of the face maps' maxima above the threshold."""
    return face_keypoints(face_maps(crop, xml))


def normalised(peaks: np.ndarray, x: int, y: int, height: int, width: int) -> list | None:
    """Crop keypoints to image-normalised ones, (0, 0)-ish ones to -1 / size; None when none."""
    if peaks.ndim != 2 or peaks.shape[1] != 2 or not len(peaks):
        return None
    peaks = peaks.astype(np.float32)
    px = np.where(peaks[:, 0] < 1e-6, -1, peaks[:, 0] + x) / float(width)
    py = np.where(peaks[:, 1] < 1e-6, -1, peaks[:, 1] + y) / float(height)
    return list(zip(px, py))  # float32 scalars, as the extension keeps them (its drawing multiplies in float32)


# --- drawing ----------------------------------------------------------------------------------------------

def is_normalised(points: list) -> bool:
    found = [0 <= abs(p[0]) <= 1 and 0 <= abs(p[1]) <= 1 for p in points if p is not None]
    return bool(found) and all(found)


def draw_body(canvas: np.ndarray, points: list) -> None:
    """Limbs and joints of one person (points normalised to the canvas)."""
    import cv2

    h, w = (canvas.shape[0], canvas.shape[1]) if is_normalised(points) else (1.0, 1.0)
    for (a, b), colour in zip(LIMBS[:DRAWN_LIMBS], COLOURS):
        p, q = points[a - 1], points[b - 1]
        if p is None or q is None:
            continue
        ys = np.array([p[0], q[0]]) * float(w)
        xs = np.array([p[1], q[1]]) * float(h)
        mid_x, mid_y = np.mean(xs), np.mean(ys)
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
        polygon = cv2.ellipse2Poly((int(mid_y), int(mid_x)), (int(length / 2), STICK), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in colour])
    for point, colour in zip(points, COLOURS):
        if point is not None:
            cv2.circle(canvas, (int(point[0] * w), int(point[1] * h)), 4, colour, thickness=-1)


def hue_colour(hue: float) -> list[float]:
    """matplotlib's hsv_to_rgb of (hue, 1, 1), x 255."""
    s = v = 1.0
    i = int(hue * 6.0)
    f = hue * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return [c * 255 for c in rgb]


def draw_hand(canvas: np.ndarray, points: list | None) -> None:
    import cv2

    if not points:
        return
    h, w = (canvas.shape[0], canvas.shape[1]) if is_normalised(points) else (1.0, 1.0)
    for index, (a, b) in enumerate(HAND_BONES):
        p, q = points[a], points[b]
        if p is None or q is None:
            continue
        x1, y1, x2, y2 = int(p[0] * w), int(p[1] * h), int(q[0] * w), int(q[1] * h)
        if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
            cv2.line(canvas, (x1, y1), (x2, y2), hue_colour(index / float(len(HAND_BONES))), thickness=2)
    for point in points:
        if point is not None:
            x, y = int(point[0] * w), int(point[1] * h)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, points: list | None) -> None:
    import cv2

    if not points:
        return
    h, w = (canvas.shape[0], canvas.shape[1]) if is_normalised(points) else (1.0, 1.0)
    for point in points:
        if point is not None:
            x, y = int(point[0] * w), int(point[1] * h)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)


def draw(people: list[Person], height: int, width: int, body: bool = True, hands: bool = False,
         face: bool = False) -> np.ndarray:
    """The pose map: RGB uint8 [height, width, 3], black where nothing is drawn."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for person in people:
        if body:
            draw_body(canvas, [None if p is None else (p[0] / float(width), p[1] / float(height)) for p in person.body])
        if hands:
            draw_hand(canvas, person.left_hand)
            draw_hand(canvas, person.right_hand)
        if face:
            draw_face(canvas, person.face)
    return canvas


# --- the preprocessor ------------------------------------------------------------------------------------

def networks(module: str, folder=None) -> dict[str, Path]:
    """The IRs module `module` runs ({"body": xml, ...}); MissingAnnotator for one not converted."""
    body, hands, face = MODULES[module]
    wanted = ["body"] + (["hand"] if hands else []) + (["face"] if face else [])
    return {part: find_annotator(NETWORKS[part][0], folder, NETWORKS[part][1], module) for part in wanted}


def detect_people(bgr: np.ndarray, nets: dict[str, Path]) -> list[Person]:
    """The people in a BGR uint8 image, with their hands and faces where `nets` has those networks."""
    h, w = bgr.shape[:2]
    heat, paf = body_maps(bgr, nets["body"])
    people = people_of(heat, paf, h)
    for person in people:
        if "hand" in nets:
            for x, y, side, is_left in hand_boxes(person.body, h, w):
                points = normalised(hand_peaks(bgr[y:y + side, x:x + side], nets["hand"]), x, y, h, w)
                if is_left:
                    person.left_hand = points
                else:
                    person.right_hand = points
        if "face" in nets:
            box = face_box(person.body, h, w)
            if box is not None:
                x, y, side = box
                person.face = normalised(face_peaks(bgr[y:y + side, x:x + side], nets["face"]), x, y, h, w)
    return people


def pose_map(rgb: np.ndarray, module: str = "openpose", annotator_dir=None) -> np.ndarray:
    """The map of preprocessor `module` (MODULES) of an RGB uint8 image at its size: the
    detector run on the image edge-padded to multiples of 64, the map cropped back."""
    nets = networks(module, annotator_dir)
    body, hands, face = MODULES[module]
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, [(0, -h % 64), (0, -w % 64), (0, 0)], mode="edge")
    bgr = np.ascontiguousarray(padded[:, :, ::-1])
    people = detect_people(bgr, nets)
    return np.ascontiguousarray(draw(people, bgr.shape[0], bgr.shape[1], body, hands, face)[:h, :w])


# the registry's entries (imaging/preprocessors.py): module, what it draws (each with the Resolution
# slider, as every legacy preprocessor of the current extension)
ENTRIES = (
    ("openpose", "OpenPose body skeletons (the body network, converted)"),
    ("openpose_hand", "OpenPose bodies and hands (body and hand networks)"),
    ("openpose_face", "OpenPose bodies and face points (body and face networks)"),
    ("openpose_faceonly", "OpenPose face points only (body and face networks)"),
    ("openpose_full", "OpenPose bodies, hands and faces (body, hand and face networks)"),
)


def runner(module: str):
    """The preprocessor function of `module`: run(RGB uint8 image, annotator_dir=None) -> map."""
    def run(image: np.ndarray, annotator_dir=None, **_) -> np.ndarray:
        return pose_map(image, module, annotator_dir)

    run.__name__ = f"run_{module}"
    return run
